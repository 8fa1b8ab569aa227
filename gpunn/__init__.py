"""gpunn: feedforward neural networks trained with backpropagation and mini-batch SGD.

One implementation of the batched forward/backward math runs on NumPy (CPU) or CuPy (NVIDIA
GPU), selected at run time::

    import gpunn
    net = gpunn.Network([784, 30, 10])            # the article's network
    net.fit(X, y, epochs=30, batch_size=10, lr=3.0)
    net.evaluate(X_test, y_test)                   # {"loss": ..., "accuracy": ...}
"""

__version__ = "0.1.0"

from .backend import Ops, available_backends, get_backend
from .errors import (
    BackendUnavailableError,
    DataError,
    DeviceMemoryError,
    DivergenceError,
    GpunnError,
    InputError,
    InputTypeError,
    ModelFileError,
    NumericalError,
    OutputFileError,
)
from .io import load
from .network import Network
from .optim import SGD, Adam, Momentum, Nesterov, Optimizer
from .train import Callback, EarlyStopping, History

__all__ = [
    "SGD",
    "Adam",
    "BackendUnavailableError",
    "Callback",
    "DataError",
    "DeviceMemoryError",
    "DivergenceError",
    "EarlyStopping",
    "GpunnError",
    "History",
    "InputError",
    "InputTypeError",
    "ModelFileError",
    "Momentum",
    "Nesterov",
    "Network",
    "NumericalError",
    "Ops",
    "Optimizer",
    "OutputFileError",
    "__version__",
    "available_backends",
    "get_backend",
    "load",
]
