"""Bad input at the public boundary gets a gpunn error naming the argument and the problem;
backend requests that cannot be served say why and what to do."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest

import gpunn
import gpunn.backend as backend_module
from gpunn import validation
from gpunn.backend import GpuFallbackWarning, cuda, get_backend
from gpunn.errors import (
    BackendUnavailableError,
    GpunnError,
    InputError,
    InputTypeError,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(6, 3))
y = np.array([0, 1, 2, 1, 0, 2])


@pytest.fixture
def net():
    return gpunn.Network([3, 4, 3], backend="numpy", output="softmax", loss="cross_entropy")


def raises(error, call, *fragments):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, GpunnError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------ constructor
@pytest.mark.parametrize(
    "kwargs, error, fragments",
    [
        ({"activation": "softplus"}, InputError, ["activation", "'sigmoid'", "'relu'"]),
        ({"activation": None}, InputError, ["activation is None"]),
        ({"output": "relu"}, InputError, ["output", "'softmax'"]),
        ({"loss": "hinge"}, InputError, ["loss", "'cross_entropy'"]),
        ({"init": "xavier"}, InputError, ["init", "'glorot'"]),
        ({"backend": "tpu"}, InputError, ["backend", "'numpy'", "'cupy'", "'auto'"]),
        ({"dtype": "int32"}, InputTypeError, ["dtype", "'float32'", "'float64'"]),
        ({"dtype": "float16"}, InputTypeError, ["dtype", "float16"]),
        ({"dtype": None}, InputTypeError, ["dtype"]),
        ({"dtype": "floaty"}, InputTypeError, ["dtype"]),
        ({"seed": -1}, InputError, ["seed"]),
        ({"seed": 1.5}, InputTypeError, ["seed"]),
        ({"output": "identity", "loss": "cross_entropy"}, InputError, ["cross_entropy"]),
    ],
)
def test_constructor_refuses_bad_settings(kwargs, error, fragments):
    raises(error, lambda: gpunn.Network([3, 2], **{"backend": "numpy", **kwargs}), *fragments)


@pytest.mark.parametrize(
    "sizes, error, fragment",
    [
        ([3], InputError, "at least an input and an output"),
        ([3, 0], InputError, "sizes[1]"),
        ([3, -2, 1], InputError, "sizes[1]"),
        ([3.0, 2], InputTypeError, "sizes[0]"),
        ([3, True], InputTypeError, "sizes[1]"),
        (3, InputTypeError, "list of layer sizes"),
        ("3-2", InputTypeError, "list of layer sizes"),
        (None, InputTypeError, "list of layer sizes"),
    ],
)
def test_constructor_refuses_bad_sizes(sizes, error, fragment):
    raises(error, lambda: gpunn.Network(sizes, backend="numpy"), fragment)


def test_choices_are_case_insensitive_and_numpy_sizes_work():
    net = gpunn.Network(np.array([3, 2]), activation="ReLU", output="Softmax", backend="numpy")
    assert (net.sizes, net.activation, net.output) == ((3, 2), "relu", "softmax")


# ------------------------------------------------------------------ features X
@pytest.mark.parametrize(
    "bad, error, fragments",
    [
        (None, InputTypeError, ["X is None"]),
        (np.ones((6, 2)), InputError, ["2 features", "input layer has 3"]),
        (np.ones((6, 4)), InputError, ["4 features", "label column"]),
        (np.ones((3, 6)), InputError, ["transposed", "X.T"]),
        (np.ones(3), InputError, ["shape (3,)", "reshape(1, -1)"]),
        (np.ones(5), InputError, ["shape (5,)", "2-D"]),
        (np.float64(2.0), InputError, ["single number"]),
        (7, InputError, ["single number"]),
        (np.ones((2, 3, 1)), InputError, ["shape (2, 3, 1)", "2-D"]),
        (np.ones((0, 3)), InputError, ["empty"]),
        ([], InputError, ["shape (0,)"]),
        ([[1, 2, 3], [4, 5]], InputError, ["same length"]),
        (np.ones((2, 3), bool), InputTypeError, ["bool", "astype"]),
        (np.ones((2, 3), complex), InputTypeError, ["complex"]),
        (np.array([["a", "b", "c"]]), InputTypeError, ["<U1", "header row"]),
        (np.array([[1, 2, None]], dtype=object), InputTypeError, ["object"]),
        (np.array([[1.0, np.nan, 0.0], [0, 0, 0], [np.inf, 0, 0]]), InputError,
         ["NaN or infinite", "2 sample(s)", "row 0"]),
        (np.array([[0.0, 0, 0], [0, -np.inf, 0]], np.float32), InputError, ["row 1"]),
        (np.full((2, 3), np.nan, np.float16), InputError, ["NaN"]),
    ],
)
@pytest.mark.parametrize("method", ["predict", "evaluate", "loss", "gradients", "fit"])
def test_bad_features_are_refused_by_every_entry_point(net, method, bad, error, fragments):
    n = 6 if not hasattr(bad, "__len__") else max(len(bad), 1)
    labels = np.zeros(n, int)
    calls = {
        "predict": lambda: net.predict(bad),
        "evaluate": lambda: net.evaluate(bad, labels),
        "loss": lambda: net.loss(bad, labels),
        "gradients": lambda: net.gradients(bad, labels),
        "fit": lambda: net.fit(bad, labels, progress=False),
    }
    before = net.get_params()
    raises(error, calls[method], *fragments)
    after = net.get_params()
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(before, after, strict=False))


def test_good_features_in_many_forms(net):
    for good in (X.tolist(), X.astype(np.float32), X.astype(np.int64), np.asfortranarray(X),
                 X[:, ::-1].copy(), X.astype(np.float16), X.astype(np.uint8)):
        out = net.predict(good)
        assert out.shape == (len(good), 3) and np.isfinite(out).all()
    single = gpunn.Network([1, 2], backend="numpy")
    assert single.predict(np.arange(4.0)).shape == (4, 2)  # 1-D X: one feature per sample


def test_narrow_dtype_range_check():
    big = np.full((2, 3), 1e300)
    raises(InputError, lambda: validation.check_features(big, 3, dtype="float32"),
           "beyond the range", "float32")
    assert validation.check_features(big, 3, dtype="float64") is big
    assert validation.check_features(np.full((2, 3), 3e38), 3, dtype="float32").shape == (2, 3)


# ------------------------------------------------------------------ targets Y
@pytest.mark.parametrize(
    "bad, error, fragments",
    [
        (None, InputTypeError, ["Y is None"]),
        (np.array([1, 2, 3, 2, 1, 3]), InputError, ["1 to 3", "0..2", "subtract 1"]),
        (np.array([0, 1, 5, 1, 0, 2]), InputError, ["0 to 5", "0..2"]),
        (np.array([0, -1, 2, 1, 0, 2]), InputError, ["-1", "0..2"]),
        (np.array([0, 0.5, 2, 1, 0, 2]), InputError, ["non-integer", "2-D array of targets"]),
        (np.array([0, np.nan, 2, 1, 0, 2]), InputError, ["NaN", "row 1"]),
        (np.array([0, 1e30, 2, 1, 0, 2]), InputError, ["1e+30", "0..2"]),
        (y[:4], InputError, ["4 samples", "X has 6"]),
        (np.float64(1.0), InputError, ["single number"]),
        (np.ones((6, 2)), InputError, ["shape (6, 2)", "(6, 3)"]),
        (np.ones((6, 1)), InputError, ["shape (6, 1)", "ravel()"]),
        (np.ones((6, 3, 1)), InputError, ["shape (6, 3, 1)"]),
        (np.full((6, 3), np.inf), InputError, ["NaN or infinite"]),
        (np.ones((6, 3), bool), InputTypeError, ["bool"]),
        (np.ones(6, complex), InputTypeError, ["complex"]),
        (np.array(["cat"] * 6), InputTypeError, ["<U3"]),
        ([[0, 1], [0]] * 3, InputError, ["same length"]),
    ],
)
@pytest.mark.parametrize("method", ["evaluate", "loss", "gradients", "fit"])
def test_bad_targets_are_refused(net, method, bad, error, fragments):
    calls = {
        "evaluate": lambda: net.evaluate(X, bad),
        "loss": lambda: net.loss(X, bad),
        "gradients": lambda: net.gradients(X, bad),
        "fit": lambda: net.fit(X, bad, progress=False),
    }
    raises(error, calls[method], *fragments)


def test_one_based_labels_get_a_hint_even_when_a_class_is_absent():
    ten = gpunn.Network([3, 10], backend="numpy")
    labels = np.array([1, 3, 10, 4, 5, 9])
    raises(InputError, lambda: ten.evaluate(X, labels), "0..9", "subtract 1")


def test_good_targets_in_many_forms(net):
    for good in (y, y.tolist(), y.astype(np.uint8), y.astype(float), np.eye(3)[y],
                 np.eye(3, dtype=int)[y]):
        result = net.evaluate(X, good)
        assert 0.0 <= result["accuracy"] <= 1.0 and np.isfinite(result["loss"])


def test_single_output_targets():
    binary = gpunn.Network([3, 1], backend="numpy")
    for good in (np.array([0, 1, 1, 0, 1, 0]), np.array([True, False] * 3),
                 np.array([0.2, 0.9, 0.5, 0.1, 0.0, 1.0])):
        assert 0.0 <= binary.evaluate(X, good)["accuracy"] <= 1.0
    raises(InputError, lambda: binary.evaluate(X, np.array([1, 2, 2, 1, 2, 1])), "subtract 1")
    raises(InputError, lambda: binary.evaluate(X, np.array([0, 3, 0, 1, 0, 1])), "regression")
    regression = gpunn.Network([3, 1], output="identity", backend="numpy")
    assert np.isfinite(regression.loss(X, np.linspace(-50, 50, 6)))


# ------------------------------------------------------------------ training options
@pytest.mark.parametrize(
    "options, error, fragments",
    [
        ({"batch_size": 0}, InputError, ["batch_size", "at least 1"]),
        ({"batch_size": -4}, InputError, ["batch_size"]),
        ({"batch_size": 2.5}, InputTypeError, ["batch_size", "integer"]),
        ({"batch_size": float("inf")}, InputTypeError, ["batch_size"]),
        ({"batch_size": float("nan")}, InputTypeError, ["batch_size"]),
        ({"batch_size": True}, InputTypeError, ["batch_size"]),
        ({"batch_size": "32"}, InputTypeError, ["batch_size"]),
        ({"epochs": 0}, InputError, ["epochs"]),
        ({"epochs": -1}, InputError, ["epochs"]),
        ({"epochs": 2.0}, InputTypeError, ["epochs"]),
        ({"lr": 0}, InputError, ["lr", "> 0"]),
        ({"lr": -0.1}, InputError, ["lr"]),
        ({"lr": float("nan")}, InputError, ["lr", "finite"]),
        ({"lr": float("inf")}, InputError, ["lr", "finite"]),
        ({"lr": "0.1"}, InputTypeError, ["lr", "number"]),
        ({"optimizer": "rmsprop"}, InputError, ["optimizer", "'sgd'", "'adam'"]),
        ({"schedule": "linear"}, InputError, ["schedule", "'cosine'"]),
        ({"seed": -2}, InputError, ["seed"]),
        ({"initial_epoch": -1}, InputError, ["initial_epoch"]),
        ({"validation_data": (X, y[:3])}, InputError, ["validation Y", "3 samples"]),
        ({"validation_data": (X[:, :2], y)}, InputError, ["validation X", "2 features"]),
    ],
)
def test_fit_refuses_bad_options_before_training(net, options, error, fragments):
    before = net.get_params()
    raises(error, lambda: net.fit(X, y, progress=False, **options), *fragments)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(before, net.get_params(), strict=False))


@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf"), "0.1"])
def test_a_schedule_function_returning_no_usable_factor_is_refused(net, bad):
    """A user's schedule is called each epoch: what it returns is checked there, so that a
    NaN or negative learning rate never reaches the weights."""
    history = []
    with pytest.raises((InputError, InputTypeError), match="schedule's learning-rate factor "
                       "for epoch 1"):
        net.fit(X, y, epochs=3, progress=False, schedule=lambda e: 1.0 if e == 0 else bad,
                callbacks=[lambda net, record: history.append(record["epoch"])])
    assert len(history) == 1  # epoch 0 trained, with the factor 1.0
    assert all(np.isfinite(W).all() for W, _ in net.get_params())


def test_number_checks_name_the_bound_they_hold():
    assert validation.check_int("seed", np.int64(0), minimum=0) == 0
    raises(InputError, lambda: validation.check_int("epochs", 0, minimum=1),
           "epochs must be at least 1")
    assert validation.check_float("weight_decay", 0, minimum=0.0, inclusive=True) == 0.0
    raises(InputError, lambda: validation.check_float("lr", 0, minimum=0.0, inclusive=False),
           "lr must be a finite number > 0")


def test_fit_accepts_edge_values(net):
    history = net.fit(X, y, batch_size=1000, epochs=1, progress=False)  # batch > n is fine
    assert len(history) == 1
    history = net.fit(X, y, batch_size=np.int64(2), lr=np.float32(0.1), epochs=np.int32(2),
                      progress=False)
    assert len(history) == 2


def test_validation_data_must_be_a_pair():
    raises(InputTypeError, lambda: validation.check_validation_data(X), "pair", "ndarray")
    raises(InputTypeError, lambda: validation.check_validation_data((X, y, y)), "length 3")
    assert validation.check_validation_data([X, y])[0] is X


def test_check_bool():
    assert validation.check_bool("shuffle", np.bool_(False)) is False
    raises(InputTypeError, lambda: validation.check_bool("shuffle", "no"), "shuffle")


# ------------------------------------------------------------------ set_params
def test_check_params(net):
    shapes = [(W.shape, b.shape) for W, b in net.get_params()]
    good = net.get_params()
    assert len(validation.check_params(good, shapes)) == 2
    W0, b0 = good[0]
    cases = [
        (None, InputTypeError, "list of (W, b) pairs"),
        ([good[0]], InputError, "1 (W, b) pairs"),
        ([(W0, b0, b0), good[1]], InputTypeError, "pair (W, b)"),
        ([W0, good[1]], InputTypeError, "pair (W, b)"),
        ([(W0.T, b0), good[1]], InputError, "layer 1 W has shape (3, 4)"),
        ([(W0, b0[:2]), good[1]], InputError, "layer 1 b"),
        ([(np.full_like(W0, np.nan), b0), good[1]], InputError, "layer 1 W contains NaN"),
        ([(W0.astype(complex), b0), good[1]], InputTypeError, "complex"),
        ([(W0.astype(str), b0), good[1]], InputTypeError, "layer 1 W"),
        ([(None, b0), good[1]], InputTypeError, "layer 1 W is None"),
    ]
    for params, error, fragment in cases:
        raises(error, lambda params=params: validation.check_params(params, shapes), fragment)


def test_set_params_refuses_wrong_shapes(net):
    params = net.get_params()
    params[1] = (params[1][0][:, :2], params[1][1])
    raises(InputError, lambda: net.set_params(params), "layer 2")
    raises(InputError, lambda: net.set_params(params[:1]), "layers")


# ------------------------------------------------------------------ backends and GPU faults
@pytest.fixture
def fresh_backends(monkeypatch):
    """Clear the cached backend decisions before and after a test that fakes the machine."""
    monkeypatch.delenv(backend_module.ENV_VAR, raising=False)

    def clear():
        cuda.unavailable_reason.cache_clear()
        backend_module._backend.cache_clear()
        backend_module._auto_backend.cache_clear()

    clear()
    yield monkeypatch
    monkeypatch.undo()
    clear()


class CUDARuntimeError(RuntimeError):
    """Stands in for cupy_backends.cuda.api.runtime.CUDARuntimeError."""


def fake_cupy(failure: Exception | None = None, count: int = 1, driver: int = 0,
              built_for: int = 12090):
    def get_device_count():
        if failure is not None:
            raise failure
        return count

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count,
                                    driverGetVersion=lambda: driver,
                                    runtimeGetVersion=lambda: built_for)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


def auto_with_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = [get_backend("auto"), get_backend(), gpunn.Network([2, 1]).backend]
    fallbacks = [w for w in caught if issubclass(w.category, GpuFallbackWarning)]
    return chosen, fallbacks


def test_cupy_absent(fresh_backends):
    fresh_backends.setattr(cuda, "cupy", None)
    fresh_backends.setattr(cuda, "_IMPORT_ERROR", "No module named 'cupy'")
    message = raises(BackendUnavailableError, lambda: get_backend("cupy"),
                     "'cupy'", "not installed", "pip install", "backend='numpy'")
    assert isinstance(BackendUnavailableError(message), RuntimeError)
    raises(BackendUnavailableError, lambda: gpunn.Network([2, 1], backend="cupy"), "cupy")
    chosen, fallbacks = auto_with_warnings()
    assert [ops.name for ops in chosen] == ["numpy"] * 3
    assert len(fallbacks) == 1 and "not installed" in str(fallbacks[0].message)
    assert fallbacks[0].filename == __file__  # the notice points at the caller's line
    assert gpunn.available_backends() == ["numpy"]


INSUFFICIENT_DRIVER = CUDARuntimeError(
    "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version")


@pytest.mark.parametrize(
    "failure, versions, fragments",
    [
        (INSUFFICIENT_DRIVER, (0, 12090), ["no NVIDIA driver is installed", "install the NVIDIA"]),
        (INSUFFICIENT_DRIVER, (11040, 12090),
         ["supports CUDA 11.4 but this CuPy was built for CUDA 12.9", "update the NVIDIA"]),
        (INSUFFICIENT_DRIVER, (12020, 13000),
         ["supports CUDA 12.2 but this CuPy was built for CUDA 13.0", 'gpunn[cuda12]']),
        (CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"), (0, 0),
         ["no NVIDIA GPU"]),
        (OSError("libcuda.so.1: cannot open shared object file"), (0, 0), ["driver is missing"]),
        (None, (0, 0), ["no NVIDIA GPU is visible", "CUDA_VISIBLE_DEVICES"]),
    ],
)
def test_cupy_without_usable_gpu(fresh_backends, failure, versions, fragments):
    driver, built_for = versions
    fresh_backends.setattr(cuda, "cupy", fake_cupy(failure, count=0, driver=driver,
                                                   built_for=built_for))
    raises(BackendUnavailableError, lambda: get_backend("cupy"), *fragments, "backend='numpy'")
    chosen, fallbacks = auto_with_warnings()
    assert [ops.name for ops in chosen] == ["numpy"] * 3
    assert len(fallbacks) == 1
    assert fragments[0] in str(fallbacks[0].message)


def test_this_machine_without_gpu(fresh_backends):
    if cuda.unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    raises(BackendUnavailableError, lambda: get_backend("cupy"), "cannot run")
    chosen, fallbacks = auto_with_warnings()
    assert chosen[0].name == "numpy" and len(fallbacks) == 1


def test_explicit_cupy_is_never_hidden_by_the_fallback(fresh_backends, tmp_path):
    fresh_backends.setattr(cuda, "cupy", fake_cupy(CUDARuntimeError("cudaErrorNoDevice")))
    path = tmp_path / "model.npz"
    gpunn.Network([2, 1], backend="numpy").save(path)
    raises(BackendUnavailableError, lambda: gpunn.load(path, backend="cupy"), "cupy")
    fresh_backends.setenv(backend_module.ENV_VAR, "cupy")
    raises(BackendUnavailableError, lambda: get_backend("auto"), "GPUNN_BACKEND=cupy",
           "Unset GPUNN_BACKEND")
    # 'auto' fails too while the variable asks for CuPy: the advice must not offer it
    message = raises(BackendUnavailableError, lambda: get_backend("cupy"), "backend='numpy'")
    assert "'auto'" not in message


def test_environment_variable(fresh_backends):
    fresh_backends.setattr(cuda, "cupy", None)
    fresh_backends.setenv(backend_module.ENV_VAR, "numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit choice gives no fallback notice
        assert get_backend("auto").name == "numpy"
        assert gpunn.Network([2, 1]).backend.name == "numpy"
    fresh_backends.setenv(backend_module.ENV_VAR, "bogus")
    raises(InputError, lambda: get_backend("auto"), "GPUNN_BACKEND", "'bogus'", "'numpy'")
    raises(InputError, lambda: gpunn.Network([2, 1]), "GPUNN_BACKEND")
    assert get_backend("numpy").name == "numpy"  # an explicit argument wins over the variable
