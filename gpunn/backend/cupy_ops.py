"""CuPy (NVIDIA GPU) kernels: the reference kernels with the GPU's hot paths fused.

:class:`CupyOps` overrides only what a training step spends its launches on, with the fused
kernels of :mod:`gpunn.backend.kernels` (each has a NumPy reference):

* products: through a cuBLAS handle of gpunn's own (:mod:`gpunn.backend.cublas`), since CuPy
  refuses cuBLAS calls while a step is being recorded;
* forward: GEMM into the layer's buffer, then ONE kernel for bias + activation
  (:meth:`CupyOps.layer_forward`; softmax is one row kernel that also adds the bias);
* backward: δ ⊙ σ'(z) in one kernel; the output delta (MSE or cross-entropy) in one kernel;
* cost: one reduction that adds into a device accumulator (no host synchronisation);
* optimizer: ONE kernel over the flat parameter buffer (SGD, momentum, Nesterov, Adam), with
  scalars passed as typed values (NumPy scalars of the parameter dtype, or 0-d device arrays
  for values a recorded step must read at replay time);
* :meth:`CupyOps.run_step`: after ``warmup`` eager calls, a step is captured once as a CUDA
  graph on the backend's non-blocking stream and replayed with ``graph.launch(stream)``.
  Memory that the step allocates while it is captured is kept alive with the graph, so a
  replay never writes into memory that someone else has since been given. A step that cannot
  be captured (it synchronises, say) falls back to eager calls, with one warning.

Options: ``CupyOps(graphs=..., tf32=..., warmup=...)``; environment ``GPUNN_CUDA_GRAPHS=0``
turns graphs off, ``GPUNN_TF32=1`` turns TensorFloat-32 matrix products on (float32 GEMMs on
tensor cores, ~10-bit mantissa products; through CuPy's ``set_compute_type``, the run-time
equivalent of ``CUPY_TF32=1``).

On a machine without a GPU, ``tests/test_gpu.py`` runs this module on the simulated GPU of
``tests/simulated_cupy.py`` (CuPy's API and rules on NumPy: see ``docs/design.md``), which
checks the Python side: the kernels' arguments, what a recorded step captures, that nothing in
the step loop synchronises, that the streams are ordered. What only a real GPU can check is
listed in ``docs/gpu.md``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy

from ..errors import DeviceMemoryError, InputError, describe
from . import kernels as K
from .cublas import CUBLAS_STATUS_ALLOC_FAILED, CublasError, gemm_plan
from .cuda import (
    Gemm,
    cuda_release,
    cupy,
    float32_compute_type,
    own_cublas_gemm,
    set_float32_compute_type,
    tf32_compute_type,
    tf32_in_use,
)
from .ops import Array, EventClock, Ops

GRAPHS_ENV = "GPUNN_CUDA_GRAPHS"
TF32_ENV = "GPUNN_TF32"
MAX_GRAPHS = 64  # recorded steps kept (least recently used dropped first)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "no", "off")


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the GPU is out of memory: CuPy's pool, or the CUDA runtime
    (``cudaErrorMemoryAllocation``, 2) or cuBLAS (``CUBLAS_STATUS_ALLOC_FAILED``, 3) where they
    allocate outside the pool. cuBLAS's error class is matched by name: importing its module
    needs the cuBLAS library, which is loaded only when a product first runs."""
    if isinstance(exc, cupy.cuda.memory.OutOfMemoryError):
        return True
    if isinstance(exc, CublasError):  # gpunn's own handle
        return exc.status == CUBLAS_STATUS_ALLOC_FAILED
    status = getattr(exc, "status", None)
    if isinstance(exc, cupy.cuda.runtime.CUDARuntimeError):
        return status == 2
    return type(exc).__name__ == "CUBLASError" and status == CUBLAS_STATUS_ALLOC_FAILED


def _device_name(properties: dict[str, Any]) -> str:
    name = properties["name"]
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


class _CaptureAllocator:
    """Allocator hook for a capture: serves from the pool and keeps every block alive.

    A captured graph holds raw pointers. A temporary that the step frees while it is being
    captured would go back to CuPy's pool and could be handed out again, while each replay of
    the graph still writes into it. Keeping the blocks here (with the graph) prevents that.
    """

    def __init__(self, malloc: Callable[[int], Any]) -> None:
        self.malloc = malloc
        self.blocks: list[Any] = []

    def __call__(self, size: int) -> Any:
        block = self.malloc(size)
        self.blocks.append(block)
        return block


class _Recorded:
    """One recorded step: the graph, the memory it uses, and its eager-call count."""

    __slots__ = ("blocks", "calls", "graph")

    def __init__(self) -> None:
        self.calls = 0
        self.graph: Any = None
        self.blocks: list[Any] = []


class CupyOps(Ops):
    """Kernels for CuPy on one NVIDIA GPU (the current device when constructed)."""

    name = "cupy"
    xp = cupy
    replays_steps = True

    def __init__(
        self, graphs: bool | None = None, tf32: bool | None = None, warmup: int = 2
    ) -> None:
        super().__init__()
        self.graphs = _env_flag(GRAPHS_ENV, True) if graphs is None else bool(graphs)
        self.tf32 = _env_flag(TF32_ENV, False) if tf32 is None else bool(tf32)
        self.warmup = max(int(warmup), 1)
        self._stream: Any = None
        self._steps: OrderedDict[Any, _Recorded] = OrderedDict()
        self._eager_only: set[Any] = set()
        self._warned_capture = False
        self._zero_cache: dict[Any, Any] = {}
        # steps run by launching a recorded graph, and kernel by kernel (for diagnostics)
        self.replayed_steps = 0
        self.eager_steps = 0
        self._own_gemm: Gemm | None = None
        self.cublas_problem: str | None = None  # why gpunn's own cuBLAS handle is not in use
        if self.tf32 and cupy is not None:  # pragma: no cover - needs a GPU
            self.set_tf32(True)

    # ------------------------------------------------------------------ device and stream
    @property
    def stream(self) -> Any:
        """The backend's non-blocking stream: every step runs (and is recorded) on it."""
        if self._stream is None:
            self._stream = cupy.cuda.Stream(non_blocking=True)
        return self._stream

    @contextlib.contextmanager
    def stream_scope(self) -> Iterator[None]:
        """Make the backend's stream current, e.g. for a whole ``fit``: then the gathers, the
        steps and the updates queue on one stream and need no cross-stream ordering.

        The stream is non-blocking (it does not wait for the legacy default stream), so it is
        ordered explicitly: after the work queued before the scope (the data copied to the
        device, its one-hot encoding, the initial weights) and before the work queued after.
        """
        stream = self.stream
        outer = cupy.cuda.get_current_stream()
        if outer == stream:
            yield
            return
        stream.wait_event(outer.record())
        try:
            with stream:
                yield
        finally:
            outer.wait_event(stream.record())

    def training_scope(self) -> contextlib.AbstractContextManager[Any]:
        """What ``fit`` enters around its epochs: the backend's stream made current."""
        return self.stream_scope()

    def set_tf32(self, enabled: bool) -> None:
        """TensorFloat-32 float32 matrix products on (True) or off (False), process-wide.

        A GPU below compute capability 8.0 has no TF32: CuPy then warns and keeps the default,
        and :attr:`tf32` says False."""
        set_float32_compute_type(tf32_compute_type(enabled))
        self.tf32 = tf32_in_use()

    @contextlib.contextmanager
    def tf32_scope(self, enabled: bool = True) -> Iterator[None]:
        """TF32 on (or off) for the duration; then CuPy's float32 compute type, whatever set
        it (this backend, ``CUPY_TF32``, the user), is put back as it was."""
        before, was = float32_compute_type(), self.tf32
        self.set_tf32(enabled)
        try:
            yield
        finally:
            set_float32_compute_type(before)
            self.tf32 = was

    def tf32_in_use(self) -> bool:
        """Whether float32 matrix products run on TF32 now, whoever set it."""
        return tf32_in_use()

    def synchronize(self) -> None:
        """Wait for all queued work on this device (every stream)."""
        cupy.cuda.Device().synchronize()

    def device_name(self) -> str:
        return _device_name(cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id))

    def device_info(self) -> dict[str, Any]:
        """The current GPU: its name and number, compute capability, multiprocessors, memory
        (GiB, total and free) and the CUDA versions of the driver and of the runtime."""
        runtime = cupy.cuda.runtime
        device_id = cupy.cuda.Device().id
        properties = runtime.getDeviceProperties(device_id)
        free, _total = runtime.memGetInfo()
        return {
            "name": _device_name(properties),
            "device_id": device_id,
            "device_count": runtime.getDeviceCount(),
            "compute_capability": f"{properties['major']}.{properties['minor']}",
            "multiprocessors": properties["multiProcessorCount"],
            "memory_total_gib": round(properties["totalGlobalMem"] / 2**30, 2),
            "memory_free_gib": round(free / 2**30, 2),
            "driver_cuda_version": cuda_release(runtime.driverGetVersion()),
            "runtime_cuda_version": cuda_release(runtime.runtimeGetVersion()),
        }

    def event_clock(self) -> EventClock:
        """CUDA events, recorded on :attr:`stream`, where every step runs."""
        return EventClock(cupy.cuda.Event, cupy.cuda.get_elapsed_time, self.stream)

    # ------------------------------------------------------------------ memory and transfers
    def asarray(self, array: Any, dtype: Any = None) -> Array:
        return cupy.asarray(array, dtype=dtype)

    def to_host(self, array: Array) -> numpy.ndarray:
        """A NumPy copy (``.get()``): the one place gpunn moves data to the host; counted."""
        self.host_transfers += 1
        if isinstance(array, numpy.ndarray):
            return array.copy()
        return array.get()

    def address(self, array: Array) -> int:
        return array.data.ptr

    def copy_into(self, out: Array, source: Array) -> Array:
        """out[...] = source: an asynchronous device-to-device copy where both are contiguous."""
        if (
            out.shape == source.shape
            and out.dtype == source.dtype
            and out.flags.c_contiguous
            and source.flags.c_contiguous
        ):
            if out.nbytes:
                stream = cupy.cuda.get_current_stream()
                out.data.copy_from_device_async(source.data, out.nbytes, stream)
            return out
        out[...] = source
        return out

    def gather_rows(self, source: Array, index: Array, out: Array) -> Array:
        """out[i] = source[index[i]]: one kernel, reading whole rows (coalesced)."""
        if not source.flags.c_contiguous or source.dtype != out.dtype:
            return super().gather_rows(source, index, out)
        cols = math.prod(source.shape[1:])
        K.GATHER_ROWS.build()(source, index.reshape(-1, *([1] * (out.ndim - 1))), cols, out)
        return out

    def gather_batch(
        self, source: Array, order: Array, cursor: Array, offset: int, out: Array
    ) -> Array:
        """out[r] = source[order[cursor + offset + r]] in one kernel, the cursor read there
        (``source`` is a raw argument, indexed through its strides: any layout works)."""
        cols = math.prod(source.shape[1:])
        K.GATHER_BATCH.build()(source, order, cursor, numpy.int64(offset), cols, out)
        return out

    def advance_cursor(self, cursor: Array, rows: int, n: int) -> None:
        """cursor ← (cursor + rows) mod n: one thread."""
        K.ADVANCE_CURSOR.build()(numpy.int64(rows), numpy.int64(n), cursor)

    @contextlib.contextmanager
    def memory_guard(self, what: str, rows: int | None, nbytes: int) -> Iterator[None]:
        """Turn CuPy's out-of-memory error into :class:`~gpunn.errors.DeviceMemoryError`
        that names the batch size (``rows``, None where there is no batch) and the memory
        needed."""
        try:
            yield
        except Exception as exc:
            if not _out_of_memory(exc):
                raise
            free = self._free_bytes()
            where = f" ({_mib(free)} free)" if free is not None else ""
            batch = "" if rows is None else f" for a batch of {rows} rows"
            smaller = "a smaller network" if rows is None else "a smaller batch_size or network"
            raise DeviceMemoryError(
                f"the GPU ran out of memory while {what}{batch}, which takes about "
                f"{_mib(nbytes)} on the device{where}. Use {smaller}, or float32 where it is "
                f"float64 ({exc})"
            ) from exc

    def _free_bytes(self) -> int | None:
        try:  # pragma: no cover - needs a GPU
            free, _total = cupy.cuda.runtime.memGetInfo()
            return int(free) + int(cupy.get_default_memory_pool().free_bytes())
        except Exception:
            return None

    # ------------------------------------------------------------------ recorded steps
    def run_step(self, key: Any, step: Callable[[], None]) -> None:
        """Run ``step()``; after ``warmup`` eager calls for ``key``, record it once as a CUDA
        graph on :attr:`stream` and replay the graph for every later call with that key.

        ``step`` must read and write only buffers that stay fixed for ``key`` (the caller's
        contract), and must not synchronise with the host. A recording also fixes how its
        matrix products compute (TF32 or not), so CuPy's float32 compute type joins the key.
        """
        key = (key, float32_compute_type())
        if not self.graphs or key in self._eager_only:
            self.eager_steps += 1
            self._on_stream(step)
            return
        record = self._steps.get(key)
        if record is None:
            record = self._steps[key] = _Recorded()
            while len(self._steps) > MAX_GRAPHS:
                self._steps.popitem(last=False)
        else:
            self._steps.move_to_end(key)
        if record.graph is not None:
            self.replayed_steps += 1
            self._on_stream(lambda: record.graph.launch(self.stream))
            return
        if record.calls < self.warmup:
            record.calls += 1
            self.eager_steps += 1
            self._on_stream(step)
            return
        self._on_stream(lambda: self._capture(key, record, step))

    def _capture(self, key: Any, record: _Recorded, step: Callable[[], None]) -> None:
        stream = self.stream
        allocator = _CaptureAllocator(cupy.get_default_memory_pool().malloc)
        try:
            with cupy.cuda.using_allocator(allocator):
                stream.begin_capture()
                try:
                    step()
                except Exception:
                    # the step's own error says why; ending the capture it broke would only
                    # add "capture invalidated"
                    with contextlib.suppress(Exception):
                        stream.end_capture()
                    raise
                graph = stream.end_capture()
        except Exception as exc:  # a step that cannot be recorded runs eagerly from now on
            self._eager_only.add(key)
            self._steps.pop(key, None)
            if not self._warned_capture:
                self._warned_capture = True
                why = describe(exc)
                if self.cublas_problem is not None:
                    why += f"; gpunn's own cuBLAS handle is not in use: {self.cublas_problem}"
                warnings.warn(
                    f"gpunn: a training step could not be recorded as a CUDA graph "
                    f"({why}); it runs eagerly (set {GRAPHS_ENV}=0 to skip recording)",
                    RuntimeWarning,
                    stacklevel=4,
                )
            self.eager_steps += 1
            step()  # the capture ran nothing: do this step's work now
            return
        record.graph = graph
        record.blocks = allocator.blocks
        self.replayed_steps += 1
        graph.launch(stream)  # capture only recorded the step: run it

    def _on_stream(self, work: Callable[[], None]) -> None:
        """Run ``work`` on :attr:`stream`, ordered after what the caller's stream queued before
        and before what it queues after (nothing to do inside :meth:`stream_scope`)."""
        stream = self.stream
        current = cupy.cuda.get_current_stream()
        if current == stream:
            work()
            return
        stream.wait_event(current.record())
        with stream:
            work()
        current.wait_event(stream.record())

    def forget_steps(self) -> None:
        """Drop every recorded step (after the buffers they use have been replaced)."""
        self._steps.clear()
        self._eager_only.clear()

    @property
    def recorded_steps(self) -> int:
        """How many steps are held as CUDA graphs (for tests and diagnostics)."""
        return sum(1 for r in self._steps.values() if r.graph is not None)

    # ------------------------------------------------------------------ scalars
    @staticmethod
    def scalar(value: Any, dtype: Any) -> Any:
        """A kernel scalar of ``dtype``: a 0-d device array passes through, a number becomes a
        NumPy scalar of that dtype (so float32 stays float32)."""
        if cupy is not None and isinstance(value, cupy.ndarray):
            if value.dtype != numpy.dtype(dtype) or value.ndim != 0:
                raise InputError(f"a device scalar must be 0-d {numpy.dtype(dtype)}, got {value!r}")
            return value
        return numpy.dtype(dtype).type(value)

    # ------------------------------------------------------------------ products
    def matmul(self, a: Array, b: Array, out: Array) -> Array:
        """out = a @ b through gpunn's own cuBLAS handle, which a recorded step may contain
        (CuPy refuses cuBLAS calls while a stream captures: see :mod:`gpunn.backend.cublas`);
        through ``cupy.matmul`` where one cuBLAS call cannot take the layout, where ``out``
        overlaps an operand, or where the handle cannot be made (then steps are not
        recorded: a capture fails, and says why)."""
        plan = gemm_plan(a, b, out)
        if plan is not None and (cupy.may_share_memory(out, a) or cupy.may_share_memory(out, b)):
            plan = None  # cuBLAS would read what it has already written: CuPy copies first
        gemm = self._gemm() if plan is not None else None
        if gemm is None:
            return cupy.matmul(a, b, out=out)
        gemm(plan, a, b, out)
        return out

    def _gemm(self) -> Gemm | None:
        """The product of gpunn's own cuBLAS handle, made on first use; None where it cannot
        be (no libcublas found, say), with the reason in :attr:`cublas_problem`."""
        if self._own_gemm is None and self.cublas_problem is None:
            try:
                self._own_gemm = own_cublas_gemm()
            except Exception as exc:
                if _out_of_memory(exc):
                    raise
                self.cublas_problem = describe(exc)
        return self._own_gemm

    # ------------------------------------------------------------------ forward
    def affine_forward(self, A_prev: Array, W: Array, b: Array, out: Array) -> Array:
        """Z = A_prev Wᵀ + b: a GEMM into ``out``, then the bias (one elementwise kernel)."""
        self.matmul(A_prev, W.T, out=out)
        K.BIAS_ACT["identity"].build()(out, b, out)
        return out

    def layer_forward(
        self, A_prev: Array, W: Array, b: Array, activation: str, out: Array, Z: Array = None
    ) -> Array:
        """a = σ(A_prev Wᵀ + b): a GEMM and ONE fused bias + σ kernel.

        Hidden layers (``Z`` None) compute in place in ``out``; the output layer keeps
        z = A_prev Wᵀ + b in ``Z`` for the cost and writes a into ``out``.
        """
        self.matmul(A_prev, W.T, out=out if Z is None else Z)
        if activation == "softmax":
            self._bias_softmax(out if Z is None else Z, b, out)
        elif Z is None:
            K.BIAS_ACT[activation].build()(out, b, out)
        else:
            K.BIAS_ACT_KEEP[activation].build()(b, Z, out)
        return out

    def activation_forward(self, name: str, Z: Array, out: Array) -> Array:
        if name == "softmax":
            return self.softmax(Z, out)
        K.ACT[name].build()(Z, out)
        return out

    def sigmoid(self, Z: Array, out: Array) -> Array:
        K.ACT["sigmoid"].build()(Z, out)
        return out

    def softmax(self, Z: Array, out: Array) -> Array:
        """Row-wise softmax in one kernel (with a zero bias; Z is left unchanged)."""
        zero = self._zeros(Z.shape[1], Z.dtype)
        if out is Z:
            self._bias_softmax(Z, zero, out)
            return out
        # the row kernel writes z + b back into its first argument: give it a copy
        work = out
        self.copy_into(work, Z)
        self._bias_softmax(work, zero, out)
        return out

    def _bias_softmax(self, Z: Array, b: Array, out: Array) -> None:
        rows, cols = Z.shape
        if rows == 0:
            return
        dtype = Z.dtype
        kernel = K.row_module().get_function(K.row_kernel_expression("gpunn_bias_softmax", dtype))
        threads = K.row_threads(cols)
        grid = min(rows, 65535)
        lowest = dtype.type(-numpy.inf)
        kernel(
            (grid,),
            (threads,),
            (Z, b, out, numpy.int64(rows), numpy.int64(cols), lowest),
            shared_mem=threads * dtype.itemsize,
        )

    def _zeros(self, n: int, dtype: Any) -> Array:
        key = (n, numpy.dtype(dtype).str)
        zero = self._zero_cache.get(key)
        if zero is None:
            zero = self._zero_cache[key] = cupy.zeros(n, dtype=dtype)
        return zero

    # ------------------------------------------------------------------ backward
    def activation_backward(self, name: str, A: Array, delta: Array, scratch: Array) -> Array:
        """δ ⊙= σ'(z) in one kernel (``scratch`` is not needed)."""
        if name != "identity":
            K.ACT_BACKWARD[name].build()(A, delta)
        return delta

    def output_delta(
        self, output: str, loss: str, Z: Array, A: Array, Y: Array, scale: float, out: Array
    ) -> Array:
        """δ^(L) in one kernel: (a − y)/n for cross-entropy, (2/n)(a − y) ⊙ σ' for MSE."""
        dtype = out.dtype
        if loss == "cross_entropy":
            K.XENT_DELTA.build()(A, Y, self.scalar(scale, dtype), out)
            return out
        if output in K.MSE_DELTA:
            K.MSE_DELTA[output].build()(A, Y, self.scalar(2 * scale, dtype), out)
            return out
        return super().output_delta(output, loss, Z, A, Y, scale, out)  # MSE on softmax

    # ------------------------------------------------------------------ cost
    def cost_accumulate(
        self, output: str, loss: str, Z: Array, A: Array, Y: Array, acc: Array
    ) -> Array:
        """acc += Σ over the batch of each sample's cost: one kernel, no host sync."""
        if loss == "mse":
            K.MSE_COST.build()(A, Y, acc, acc)
        elif output == "softmax":
            rows, cols = Z.shape
            if rows:
                # the kernel takes raw pointers and reads rows of ``cols`` values: targets
                # given as a strided view (a column slice, Fortran order) are copied first
                Z, Y = cupy.ascontiguousarray(Z), cupy.ascontiguousarray(Y)
                dtype = Z.dtype
                expression = K.row_kernel_expression("gpunn_softmax_xent_cost", dtype)
                kernel = K.row_module().get_function(expression)
                threads = K.row_threads(rows, limit=512)
                kernel(
                    (1,),
                    (threads,),
                    (Z, Y, acc, numpy.int64(rows), numpy.int64(cols), dtype.type(-numpy.inf)),
                    shared_mem=threads * dtype.itemsize,
                )
        else:
            K.BCE_COST.build()(Z, Y, acc, acc)
        return acc

    def cost_sum(self, output: str, loss: str, Z: Array, A: Array, Y: Array) -> Array:
        acc = cupy.zeros((), dtype=A.dtype)
        return self.cost_accumulate(output, loss, Z, A, Y, acc)

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(self, params: Array, grads: Array, lr: Any, weight_decay: Any = 0.0) -> None:
        """θ ← θ − η (∇C + λθ): one kernel over the flat buffer."""
        dtype = params.dtype
        lr, weight_decay = self.scalar(lr, dtype), self.scalar(weight_decay, dtype)
        K.SGD_UPDATE.build()(grads, lr, weight_decay, params)

    def momentum_update(
        self,
        params: Array,
        grads: Array,
        velocity: Array,
        lr: Any,
        momentum: Any,
        nesterov: bool = False,
        weight_decay: Any = 0.0,
    ) -> None:
        """v ← μv + g;  θ ← θ − ηv (Nesterov: θ ← θ − η(g + μv)), g = ∇C + λθ: one kernel."""
        dtype = params.dtype
        spec = K.NESTEROV_UPDATE if nesterov else K.MOMENTUM_UPDATE
        spec.build()(
            grads,
            self.scalar(lr, dtype),
            self.scalar(momentum, dtype),
            self.scalar(weight_decay, dtype),
            params,
            velocity,
        )

    def adam_update(
        self,
        params: Array,
        grads: Array,
        m: Array,
        v: Array,
        lr: Any,
        beta1: float,
        beta2: float,
        eps: float,
        step: Any,
        weight_decay: Any = 0.0,
    ) -> None:
        """Adam with bias correction (AdamW decay) in one kernel over the flat buffer.

        ``step`` is the host step count t (then c₁ = η/(1 − β₁ᵗ) and c₂ = 1/(1 − β₂ᵗ) are
        computed here, in float64) or a 0-d int64 device counter holding t − 1: then a
        one-thread kernel increments it and computes c₁, c₂ on the device first, which is
        what a recorded (replayed) update needs. A host ``lr`` is frozen into a recording
        (the optimizer's replay key holds it); a 0-d device ``lr`` is read at every replay.
        """
        dtype = params.dtype
        if cupy is not None and isinstance(step, cupy.ndarray):
            c1, c2 = self._adam_corrections(dtype)
            self.adam_prepare(lr, beta1, beta2, step, c1, c2)
        else:
            t = int(step)
            c1 = dtype.type(float(lr) / (1.0 - beta1**t))
            c2 = dtype.type(1.0 / (1.0 - beta2**t))
        K.ADAM_UPDATE.build()(
            grads,
            self.scalar(lr, dtype),
            self.scalar(weight_decay, dtype),
            dtype.type(beta1),
            dtype.type(1.0 - beta1),
            dtype.type(beta2),
            dtype.type(1.0 - beta2),
            dtype.type(eps),
            c1,
            c2,
            params,
            m,
            v,
        )

    def _adam_corrections(self, dtype: Any) -> tuple[Array, Array]:
        """Two 0-d device arrays for c₁ and c₂, allocated once per dtype (fixed addresses, so
        that a recorded update reads the values its own prepare kernel wrote)."""
        key = ("adam", numpy.dtype(dtype).str)
        pair = self._zero_cache.get(key)
        if pair is None:
            pair = self._zero_cache[key] = (cupy.zeros((), dtype), cupy.zeros((), dtype))
        return pair

    def adam_prepare(
        self, lr: Any, beta1: float, beta2: float, step: Array, c1: Array, c2: Array
    ) -> None:
        """t ← t + 1 on the device, and c₁ = η/(1 − β₁ᵗ), c₂ = 1/(1 − β₂ᵗ) into 0-d arrays."""
        dtype = c1.dtype
        K.ADAM_PREPARE.build()(
            self.scalar(lr, dtype), numpy.float64(beta1), numpy.float64(beta2), step, c1, c2
        )
