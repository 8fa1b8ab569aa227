"""The contenders: gpunn on each backend, PyTorch (eager, compiled, CUDA graphs, mixed
precision), the per-sample loop, and the float32 GEMM ceiling.

Each ``make_*`` function takes a configuration, a batch size and the shared synthetic data and
returns a :class:`Contender` whose ``run(steps)`` performs exactly ``steps`` full SGD steps
(forward, backward, update) over the same device-resident data, in the same order, from the
same initial weights. Anything that cannot run here raises :class:`Skip` with the reason.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backend import Ops, get_backend
from ..errors import InputError, describe
from ..network import Network
from . import persample
from .configs import BenchConfig
from .sysinfo import blas_threads
from .timing import CudaEventTimer, HostTimer, Timer, measure


class Skip(Exception):
    """A contender cannot run here; the message says why."""


@dataclass
class Contender:
    """One thing being timed: ``run(steps)`` does ``steps`` training steps of ``batch``."""

    name: str
    backend: str  # the gpunn backend whose device it runs on: "numpy" (CPU) or "cupy" (GPU)
    batch: int
    run: Callable[[int], Any]
    timer: Timer
    info: dict = field(default_factory=dict)
    #: what it trains (the gpunn Network, the torch model...), for inspection in tests
    model: Any = None


def device_of(backend: str) -> str:
    return "gpu" if backend == "cupy" else "cpu"


# --------------------------------------------------------------------------- shared data
class SyntheticData:
    """Seeded MNIST-shaped data for one model: X uniform in [0, 1), integer labels.

    The same host arrays feed every contender; device copies are made once and cached.
    """

    def __init__(self, n_in: int, n_out: int, n_samples: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.X = rng.random((n_samples, n_in), dtype=np.float32)
        self.labels = rng.integers(0, n_out, size=n_samples).astype(np.int64)
        self.n_out = n_out
        self._onehot: np.ndarray | None = None
        self._cache: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self.X)

    @property
    def onehot(self) -> np.ndarray:
        if self._onehot is None:
            self._onehot = persample.one_hot(self.labels, self.n_out)
        return self._onehot

    def for_gpunn(self, backend: Any) -> tuple[Any, Any]:
        """(X, one-hot targets) on the device of a gpunn backend, transferred once. Targets
        given as rows are used as they are, where labels would be one-hot encoded anew by
        every fit: each timed run then finds its steps already recorded on the GPU."""
        key = ("gpunn", backend.name)
        if key not in self._cache:
            self._cache[key] = (backend.asarray(self.X), backend.asarray(self.onehot))
            backend.synchronize()
        return self._cache[key]

    def for_torch(self, torch: Any, device: str, onehot: bool) -> tuple[Any, Any]:
        """(X, targets) as torch tensors on ``device`` (targets one-hot for MSE)."""
        key = ("torch", device, onehot)
        if key not in self._cache:
            y = self.onehot if onehot else self.labels
            self._cache[key] = (torch.from_numpy(self.X).to(device),
                                torch.from_numpy(y).to(device))
            if device == "cuda":
                torch.cuda.synchronize()
        return self._cache[key]


def steps_per_pass(batch: int, n_samples: int) -> int:
    """How many whole batches the shared data holds."""
    if batch > n_samples:
        raise InputError(f"batch size {batch} exceeds the {n_samples} samples generated")
    return n_samples // batch


def canonical_steps(steps: int, batch: int, n_samples: int) -> int:
    """``steps`` rounded up so that it is either at most one pass or whole passes."""
    spp = steps_per_pass(batch, n_samples)
    steps = max(1, int(steps))
    return steps if steps <= spp else spp * math.ceil(steps / spp)


def _split(steps: int, batch: int, n_samples: int) -> tuple[int, int]:
    """(steps per pass, passes) for a canonical step count."""
    spp = steps_per_pass(batch, n_samples)
    if steps <= spp:
        return steps, 1
    if steps % spp:
        raise InputError(f"{steps} steps is not a whole number of passes of {spp} steps")
    return spp, steps // spp


# --------------------------------------------------------------------------- gpunn
def make_network(cfg: BenchConfig, backend: str, seed: int = 0) -> Network:
    """gpunn.Network for ``cfg`` on ``backend``, float32, through the public API."""
    return Network(list(cfg.layers), activation=cfg.activation, output=cfg.output,
                   loss=cfg.loss, init=cfg.init, backend=backend, dtype="float32", seed=seed)


def backend_timer(backend: Ops) -> Timer:
    """The device's own events where the backend has them (CUDA events on the stream its
    work runs on), otherwise a host clock read after the backend has synchronised."""
    clock = backend.event_clock()
    if clock is None:
        return HostTimer(backend.synchronize)
    return CudaEventTimer(clock.new_event, clock.elapsed_ms, backend.synchronize, clock.stream)


def make_gpunn(cfg: BenchConfig, backend: str, batch: int, data: SyntheticData,
               seed: int = 0, net: Any = None) -> Contender:
    """gpunn: ``net.fit`` over the device-resident data, no shuffling, no progress bar."""
    net = net if net is not None else make_network(cfg, backend, seed)
    be = net.backend
    X, y = data.for_gpunn(be)
    n = len(data)

    info: dict[str, Any] = {"device": be.device_name()}

    def run(steps: int) -> None:
        spp, passes = _split(steps, batch, n)
        m = spp * batch
        before = _step_counts(be)
        net.fit(X[:m], y[:m], epochs=passes, batch_size=batch, lr=cfg.lr, shuffle=False,
                progress=False)
        if before is not None:  # the last run's: how its steps ran (recorded graphs or not)
            replayed, eager = (a - b for a, b in zip(_step_counts(be), before, strict=True))
            info.update(replayed_steps=replayed, eager_steps=eager)

    return Contender("gpunn", be.name, batch, run, backend_timer(be), info, net)


def _step_counts(backend: Ops) -> tuple[int, int] | None:
    """(steps replayed as recorded graphs, steps run kernel by kernel) so far, where the
    backend records steps; None where it does not."""
    if not backend.replays_steps:
        return None
    return backend.replayed_steps, backend.eager_steps


# --------------------------------------------------------------------------- PyTorch
def import_torch() -> Any:
    try:
        import torch
    except Exception as exc:
        raise Skip(f"PyTorch is not importable ({describe(exc)})") from None
    return torch


def torch_device(torch: Any, backend: str) -> str:
    if backend == "cupy":
        if not torch.cuda.is_available():
            raise Skip(f"torch {torch.__version__} has no usable CUDA device "
                       f"(built for CUDA {torch.version.cuda})")
        return "cuda"
    return "cpu"


def set_torch_threads(torch: Any) -> dict:
    """Give torch as many CPU threads as NumPy's BLAS has; report both."""
    n = blas_threads()
    if n:
        torch.set_num_threads(n)
    return {"numpy_blas_threads": n, "torch_threads": torch.get_num_threads()}


def torch_model(torch: Any, cfg: BenchConfig, params: list, device: str) -> tuple[Any, Any]:
    """(model, loss_fn) equal to the gpunn network with weights ``params`` [(W, b), ...].

    Softmax + cross-entropy is folded into ``F.cross_entropy`` (logits in, mean over the
    batch); MSE is ||a - y||^2 summed over outputs, averaged over the batch (the costs of
    ``docs/design.md``).
    """
    nn = torch.nn
    acts = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "identity": nn.Identity}
    mods: list[Any] = []
    for i, (W, _) in enumerate(params):
        mods.append(nn.Linear(W.shape[1], W.shape[0]))
        if i < len(params) - 1:
            mods.append(acts[cfg.activation]())
    if cfg.loss == "cross_entropy":
        if cfg.output != "softmax":
            raise Skip("cross_entropy needs the softmax output")
        loss_fn = torch.nn.functional.cross_entropy
    else:
        if cfg.output == "softmax":
            mods.append(nn.Softmax(dim=1))
        elif cfg.output != "identity":
            mods.append(acts[cfg.output]())

        def loss_fn(out: Any, y: Any) -> Any:
            return ((out - y) ** 2).sum(dim=1).mean()

    model = nn.Sequential(*mods).to(device)
    load_params(torch, model, params)
    return model, loss_fn


def load_params(torch: Any, model: Any, params: list) -> None:
    """Copy the weights ``params`` [(W, b), ...] into the model's Linear layers, in order."""
    layers = [m for m in model if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer, (W, b) in zip(layers, params, strict=True):
            layer.weight.copy_(torch.from_numpy(np.asarray(W, dtype=np.float32)))
            layer.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32).reshape(-1)))


def _torch_setup(cfg: BenchConfig, backend: str, data: SyntheticData, params: list,
                 tf32: bool) -> tuple[Any, str, Any, Any, Any, Any, dict]:
    torch = import_torch()
    device = torch_device(torch, backend)
    info = {"torch": torch.__version__, "device": device,
            "update": "p -= lr * grad (torch._foreach_add_)"}
    if device == "cuda":
        info["tf32"] = bool(tf32)
    else:
        info.update(set_torch_threads(torch))
    model, loss_fn = torch_model(torch, cfg, params, device)
    X, Y = data.for_torch(torch, device, onehot=(cfg.loss == "mse"))
    return torch, device, model, loss_fn, X, Y, info


def torch_sgd(torch: Any, model: Any, lr: float) -> tuple[Callable[[], None],
                                                         Callable[[], None]]:
    """(zero_grad, step) of plain SGD, p <- p - lr * grad, as one foreach kernel where torch
    has it. (torch.optim.SGD does the same arithmetic; building one imports torch._dynamo,
    which costs seconds, and its per-step bookkeeping is overhead no contender needs.)"""
    params = list(model.parameters())
    foreach = getattr(torch, "_foreach_add_", None)

    def zero_grad() -> None:
        for p in params:
            p.grad = None

    def step() -> None:
        with torch.no_grad():
            grads = [p.grad for p in params]
            if foreach is not None:
                foreach(params, grads, alpha=-lr)
            else:  # pragma: no cover - very old torch
                for p, g in zip(params, grads, strict=True):
                    p.add_(g, alpha=-lr)

    return zero_grad, step


@contextlib.contextmanager
def torch_tf32(enabled: bool) -> Any:
    """PyTorch's CUDA float32 matrix products on TF32 (``enabled``) or in full float32, for the
    duration, as gpunn's are under ``gpunn bench --tf32``: the peers then do the same
    arithmetic, and the ratios compare like with like. Without PyTorch, nothing to switch."""
    try:
        import torch
    except Exception:
        yield
        return
    matmul = torch.backends.cuda.matmul
    name, value = (("fp32_precision", "tf32" if enabled else "ieee")
                   if hasattr(matmul, "fp32_precision") else ("allow_tf32", bool(enabled)))
    before = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, before)


def _torch_timer(torch: Any, device: str) -> Timer:
    if device == "cuda":
        return CudaEventTimer(lambda: torch.cuda.Event(enable_timing=True),
                              lambda a, b: a.elapsed_time(b), torch.cuda.synchronize)
    return HostTimer()


def make_torch_eager(cfg: BenchConfig, backend: str, batch: int, data: SyntheticData,
                     params: list, tf32: bool = False) -> Contender:
    """PyTorch eager: Linear layers, SGD, one Python-level step per batch; ``tf32``: its CUDA
    float32 products on TF32, as gpunn's under ``--tf32``."""
    torch, device, model, loss_fn, X, Y, info = _torch_setup(cfg, backend, data, params, tf32)
    zero_grad, sgd_step = torch_sgd(torch, model, cfg.lr)

    def step(xb: Any, yb: Any) -> None:
        zero_grad()
        loss_fn(model(xb), yb).backward()
        sgd_step()

    return Contender("torch-eager", backend, batch, _batch_loop(step, X, Y, batch, tf32),
                     _torch_timer(torch, device), info, model)


def _batch_loop(step: Callable[[Any, Any], None], X: Any, Y: Any, batch: int,
                tf32: bool) -> Callable[[int], None]:
    """``run(steps)`` of a PyTorch contender: ``step(xb, yb)`` on consecutive batches of the
    shared data, in passes over it, with PyTorch's CUDA products in the precision asked for."""
    n = len(X)

    def run(steps: int) -> None:
        spp, passes = _split(steps, batch, n)
        with torch_tf32(tf32):
            for _ in range(passes):
                for i in range(spp):
                    step(X[i * batch:(i + 1) * batch], Y[i * batch:(i + 1) * batch])

    return run


def make_torch_compile(cfg: BenchConfig, backend: str, batch: int, data: SyntheticData,
                       params: list, tf32: bool = False) -> Contender:
    """PyTorch eager's step with the forward pass and the loss compiled by ``torch.compile``
    (its default inductor backend; AOTAutograd compiles their backward pass as well) and the
    same SGD update. Compilation happens here, in a first step whose seconds are reported as
    ``compile_s`` and never timed; the weights are then put back to ``params``. Raises
    :class:`Skip`, saying why, where torch.compile cannot run (no compiler, a platform or
    Python it does not support, any error while compiling)."""
    torch, device, model, loss_fn, X, Y, info = _torch_setup(cfg, backend, data, params, tf32)
    _require_torch_compile(torch, device)
    zero_grad, sgd_step = torch_sgd(torch, model, cfg.lr)
    torch.compiler.reset()  # no recompilation limit met from earlier models: each starts anew

    def model_loss(xb: Any, yb: Any) -> Any:
        return loss_fn(model(xb), yb)

    start = time.perf_counter()
    try:
        compiled_loss = torch.compile(model_loss, dynamic=False)

        def step(xb: Any, yb: Any) -> None:
            zero_grad()
            compiled_loss(xb, yb).backward()
            sgd_step()

        with torch_tf32(tf32):
            step(X[:batch], Y[:batch])
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:
        raise Skip(f"torch.compile failed here: {describe(exc).splitlines()[0]}") from None
    load_params(torch, model, params)
    info.update(compile_s=time.perf_counter() - start,
                compiled="torch.compile(forward and loss, dynamic=False), inductor")
    return Contender("torch-compile", backend, batch, _batch_loop(step, X, Y, batch, tf32),
                     _torch_timer(torch, device), info, model)


def _require_torch_compile(torch: Any, device: str) -> None:
    """Skip where torch.compile cannot run at all: a PyTorch without it, or, on the CPU, no
    C++ compiler for the code inductor generates."""
    if not hasattr(torch, "compile"):
        raise Skip(f"torch {torch.__version__} has no torch.compile")
    compilers = ("g++", "c++", "clang++", "cl")
    if device == "cpu" and not (os.environ.get("CXX") or any(map(shutil.which, compilers))):
        raise Skip("torch.compile needs a C++ compiler for its CPU code (g++, clang++ or "
                   "MSVC's cl), and none is on the PATH")


def make_torch_cuda_graph(cfg: BenchConfig, backend: str, batch: int, data: SyntheticData,
                          params: list, tf32: bool = False) -> Contender:
    """PyTorch with the whole step (forward, backward, SGD update) captured as a CUDA graph;
    each step copies its batch into the static input and replays the graph. ``tf32``: the
    captured products run on TF32 (the precision is fixed at capture)."""
    if backend != "cupy":
        raise Skip("CUDA graphs need the GPU")
    torch, device, model, loss_fn, X, Y, info = _torch_setup(cfg, backend, data, params, tf32)
    zero_grad, sgd_step = torch_sgd(torch, model, cfg.lr)
    static_x = X[:batch].clone()
    static_y = Y[:batch].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch_tf32(tf32):
        with torch.cuda.stream(side):
            for _ in range(3):
                zero_grad()
                loss_fn(model(static_x), static_y).backward()
                sgd_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        zero_grad()  # grads are allocated inside the capture, from the graph's memory pool
        with torch.cuda.graph(graph):
            static_loss = loss_fn(model(static_x), static_y)
            static_loss.backward()
            sgd_step()
    load_params(torch, model, params)  # the warm-up steps moved the weights: start again

    def step(xb: Any, yb: Any) -> None:
        static_x.copy_(xb)
        static_y.copy_(yb)
        graph.replay()

    info["graph"] = True
    return Contender("torch-cuda-graph", backend, batch, _batch_loop(step, X, Y, batch, tf32),
                     _torch_timer(torch, device), info, model)


def amp_step(torch: Any, model: Any, loss_fn: Any, lr: float, device_type: str,
             dtype: Any) -> Callable[[Any, Any], None]:
    """One step of PyTorch's mixed-precision recipe: the forward and backward passes under
    ``torch.autocast`` (``dtype`` products, float32 weights), the loss scaled by a dynamic
    ``GradScaler``, and ``torch.optim.SGD`` updating the float32 weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, foreach=True)
    scaler = torch.amp.GradScaler(device_type)

    def step(xb: Any, yb: Any) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=dtype):
            loss = loss_fn(model(xb), yb)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def make_torch_amp(cfg: BenchConfig, backend: str, batch: int, data: SyntheticData,
                   params: list, tf32: bool = False) -> Contender:
    """PyTorch eager with automatic mixed precision (float16 products, float32 weights, loss
    scaling): the speed that float16 storage reaches in PyTorch, against which to judge
    whether it would pay in gpunn. On the GPU only (float16 is a GPU format)."""
    if backend != "cupy":
        raise Skip("float16 mixed precision is measured on the GPU only")
    torch, device, model, loss_fn, X, Y, info = _torch_setup(cfg, backend, data, params, tf32)
    step = amp_step(torch, model, loss_fn, cfg.lr, "cuda", torch.float16)
    info.update(update="torch.optim.SGD(foreach=True) with torch.amp.GradScaler",
                autocast="float16")
    return Contender("torch-amp", backend, batch, _batch_loop(step, X, Y, batch, tf32),
                     _torch_timer(torch, device), info, model)


# --------------------------------------------------------------------------- per-sample loop
def per_sample_count(cfg: BenchConfig, target_s: float) -> int:
    """How many samples the per-sample loop gets: about ``target_s`` seconds of work at the
    ~4 GFLOP/s such loops reach (6 FLOPs per weight per sample), between 8 and 2048."""
    est_rate = 4e9 / (6 * cfg.weights)
    return int(min(2048, max(8, round(target_s * est_rate))))


def make_per_sample(cfg: BenchConfig, batch: int, data: SyntheticData, params: list
                    ) -> Contender:
    """The article-style loop (see :mod:`gpunn.bench.persample`) on NumPy, float32."""
    work = persample.copy_params(params)
    onehot = data.onehot
    X = data.X

    def run(steps: int) -> None:
        n = steps * batch
        if n > len(X):
            raise InputError(f"the per-sample loop was asked for {n} samples; "
                             f"{len(X)} were generated")
        persample.sgd_steps(work, X[:n], onehot[:n], batch, cfg.lr, cfg.activation,
                            cfg.output, cfg.loss)

    return Contender("per-sample", "numpy", batch, run, HostTimer(),
                     {"note": "one sample at a time, gradient summed over the mini-batch"})


# --------------------------------------------------------------------------- GEMM ceiling
def gemm_size(backend: str) -> int:
    """The square size whose float32 product stands for the device's ceiling: large enough
    to run at full rate (a smaller product can read below the network's own rate), small
    enough to time in turn with every measurement."""
    return 8192 if backend == "cupy" else 2048


def gemm_gflops(matmul: Callable[[], Any], n: int, timer: Timer, repeats: int = 5,
                warmup: int = 1, dtype: str = "float32") -> dict:
    """Median (and min/max) GFLOP/s of an n x n x n product (2 n^3 FLOPs)."""
    m = measure(matmul, steps=1, batch=1, timer=timer, warmup=warmup, repeats=repeats)
    flops = 2.0 * n**3
    return {"n": n, "gflops": flops / m.median / 1e9, "gflops_min": flops / m.max / 1e9,
            "gflops_max": flops / m.min / 1e9, "median_s": m.median, "repeats": repeats,
            "timer": m.timer, "dtype": dtype}


def backend_matmul(backend_name: str, n: int, seed: int = 0,
                   dtype: str = "float32") -> tuple[Callable[[], Any], Timer]:
    """An n x n x n product on a gpunn backend (the backend's ``matmul`` into a preallocated
    output, the products a training step makes), with the timer for that backend: the GEMM
    ceiling's unit of work. It runs where the backend trains (the GPU backend's own stream),
    which is where the timer's events are recorded."""
    be = get_backend(backend_name)
    rng = np.random.default_rng(seed)
    A = be.asarray(rng.random((n, n), dtype=np.float32), dtype=dtype)
    B = be.asarray(rng.random((n, n), dtype=np.float32), dtype=dtype)
    C = be.asarray(np.empty((n, n), dtype=dtype))

    def product() -> None:
        with be.training_scope():
            be.matmul(A, B, out=C)

    return product, backend_timer(be)


def backend_gemm(backend_name: str, n: int, repeats: int = 5, seed: int = 0,
                 dtype: str = "float32", tf32: bool = False) -> dict:
    """The GEMM rate of a gpunn backend: float32 by default; ``tf32`` measures float32 on
    the GPU's tensor cores (``--tf32``), ``dtype="float16"`` half-precision storage. Without
    ``tf32`` the product runs in whatever precision is set (TF32 under ``gpunn bench --tf32``),
    and ``dtype`` in the result says which."""
    be = get_backend(backend_name)
    with be.tf32_scope(True) if tf32 else contextlib.nullcontext():
        matmul, timer = backend_matmul(backend_name, n, seed, dtype)
        on_tf32 = dtype == "float32" and be.tf32_in_use()
        out = gemm_gflops(matmul, n, timer, repeats, dtype=dtype + ("-tf32" if on_tf32 else ""))
    out["library"] = backend_name
    return out


def torch_gemm(backend: str, n: int, repeats: int = 5, tf32: bool = False) -> dict:
    """The float32 GEMM rate of PyTorch on the device matching ``backend`` (on TF32 if
    ``tf32`` and the device is a GPU)."""
    torch = import_torch()
    device = torch_device(torch, backend)
    info = set_torch_threads(torch) if device == "cpu" else {}
    g = torch.Generator().manual_seed(0)
    A = torch.rand((n, n), generator=g).to(device)
    B = torch.rand((n, n), generator=g).to(device)
    C = torch.empty((n, n), device=device)
    with torch_tf32(tf32):
        out = gemm_gflops(lambda: torch.matmul(A, B, out=C), n, _torch_timer(torch, device),
                          repeats, dtype="float32-tf32" if tf32 and device == "cuda" else "float32")
    out.update(info, library=f"torch {torch.__version__}")
    return out
