"""A simulated CuPy: the part of CuPy that gpunn uses, run by NumPy on the host.

It lets the CuPy backend's own code — :class:`gpunn.backend.cupy_ops.CupyOps`, its calls of
the fused kernels, CUDA-graph recording, stream ordering, the memory guard — run and be checked
on a machine without a GPU. It is strict exactly where GPU code goes wrong without failing on
the CPU:

* **Device arrays are not NumPy arrays.** :class:`ndarray` wraps a host array. Converting one
  implicitly (``numpy.asarray(d)``, NumPy functions mixing it with host arrays) raises
  ``TypeError`` as CuPy does; ``.get()``, ``.item()``, ``float()`` and ``bool()`` are the
  explicit device-to-host reads and are counted (:data:`state`).
* **Kernels run their NumPy reference** (or, with ``install(compiled_kernels=True)``, their
  CUDA text compiled for the CPU by ``tests/host_kernels.py``). ``ElementwiseKernel``,
  ``ReductionKernel`` and ``RawModule`` functions are found by name among gpunn's kernel
  specs (:mod:`gpunn.backend.kernels`). A call is checked as CuPy checks it, and stricter where
  gpunn has a rule: the number of arguments, one dtype per type placeholder ``T``, scalars for
  ``T`` given as NumPy scalars or 0-d device arrays of that dtype (never Python floats, which
  would not keep float32 in float32), output shapes equal to the broadcast shape, and for the
  row kernels the launch configuration, the row and column counts and C-contiguous arrays
  (a RawKernel gets an array's data pointer, without its strides).
* **Stream capture records instead of running.** While a stream captures, every piece of
  device work issued on it is recorded, not run; ``Graph.launch`` runs the recording. So a
  host scalar is frozen at its value during capture, a 0-d device array is read at every
  launch, and a buffer replaced after capture is not the one a replay writes: a replayed step
  computes what a real CUDA graph computes. A host synchronisation while capturing, or device
  work issued on another stream, raises as CUDA does.
* **Streams must be ordered.** Work runs at once, in issue order, but every piece of it is
  stamped with its stream and a vector clock (events, ``wait_event``, host synchronisation and
  the legacy stream's implicit rules advance the clocks). Touching an array that another
  stream wrote, or writing one it read, without something ordering the two raises
  :class:`RaceError`: on a GPU the result would depend on timing.
* ``cupyx.allow_synchronize(False)`` makes every device-to-host read raise; an allocation
  larger than :attr:`State.memory_limit` raises ``cupy.cuda.memory.OutOfMemoryError``.

* Functions whose result's size depends on the data (``nonzero``, ``unique``, boolean masks)
  count as device-to-host reads, as in CuPy.

Not simulated: timing, the rounding of CUDA's math, and the reuse of freed device memory: a
recorded graph keeps the arrays it ran on alive, so a new array never gets the address of a
freed one (tests that need a reused address use the same device arrays again).

Use :func:`install` (a context manager) to put it in the place of CuPy for gpunn.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import operator
import sys
import time
import types
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import numpy

__version__ = "simulated"

DEVICE_NAME = "gpunn simulated GPU"


class State:
    """What the simulated device knows, reset by :func:`install`."""

    def __init__(self) -> None:
        self.stack: list[Stream] = []  # streams made current with ``with stream:``
        self.capturing: Stream | None = None
        self.capture_invalidated = False  # an operation the capture does not permit ran
        self.allocators: list[Callable[[int], Any]] = []
        self.allow_sync = True
        self.device_to_host = 0  # explicit reads: .get(), .item(), float(), ...
        self.host_to_device = 0  # asarray of host data
        self.launches = 0  # device work run (eagerly or by a graph launch)
        self.graph_launches = 0
        self.memory_limit = 2 << 30  # bytes; a larger single allocation is out of memory
        self.compute_type: dict[str, int] = {}
        self.gemm_compute_types: list[int] = []  # of each product of gpunn's cuBLAS handle
        self.compute_capability = "90"  # Device().compute_capability
        self.compiled_kernels = False  # run the kernels' CUDA text compiled for the CPU
        self.streams: weakref.WeakSet[Stream] = weakref.WeakSet()
        self.buffers: dict[int, _Buffer] = {}  # who last wrote and read each allocation
        # the names the installed CuPy has (None without CuPy): the simulation offers no other
        self.cupy_names: set[str] | None = None
        self.ndarray_names: set[str] | None = None


def _require_name(names: set[str] | None, name: str, where: str) -> None:
    if names is not None and name not in names:
        raise AttributeError(f"{where} has no attribute {name!r} (in the installed CuPy)")


state = State()


# ---------------------------------------------------------------------------- errors
class CUDARuntimeError(RuntimeError):
    """An error the CUDA runtime returns, with its ``status`` code where one is given."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DeviceSynchronized(RuntimeError):
    """A device-to-host read inside ``cupyx.allow_synchronize(False)``."""


class OutOfMemoryError(MemoryError):
    def __init__(self, size: int, total: int) -> None:
        super().__init__(
            f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes)."
        )


def _forbid_sync(what: str) -> None:
    if state.capturing is not None:
        state.capture_invalidated = True  # as CUDA does: the capture can only be ended now
        raise CUDARuntimeError(
            f"cudaErrorStreamCaptureUnsupported: {what} is not permitted while a stream is "
            "capturing"
        )
    if not state.allow_sync:
        raise DeviceSynchronized(f"synchronisation detected: {what}")


def _read_to_host(what: str, array: numpy.ndarray) -> None:
    """A device-to-host copy on the current stream, which the host then waits for."""
    _forbid_sync(what)
    stream = get_current_stream()
    _access(stream, reads=[array], writes=[], what=what)
    _host_waits_for(stream.clock)
    state.device_to_host += 1


# ---------------------------------------------------------------------------- ordering
class RaceError(RuntimeError):
    """Two streams touch one array and nothing orders them: on a GPU, a race."""


class _Buffer:
    """The last write to an allocation (stream serial, its clock), and reads since then."""

    __slots__ = ("reads", "write")

    def __init__(self) -> None:
        self.write: tuple[int, int] | None = None
        self.reads: dict[int, int] = {}


def _buffer(array: numpy.ndarray) -> _Buffer:
    root = array
    while isinstance(root.base, numpy.ndarray):
        root = root.base
    key = id(root)
    found = state.buffers.get(key)
    if found is None:
        found = state.buffers[key] = _Buffer()
        weakref.finalize(root, state.buffers.pop, key, None)
    return found


def _join(clock: dict[int, int], other: dict[int, int]) -> None:
    for serial, tick in other.items():
        if clock.get(serial, 0) < tick:
            clock[serial] = tick


def _host_waits_for(clock: dict[int, int]) -> None:
    """The host waited for the work ``clock`` covers: all work issued later comes after it."""
    for stream in (Stream.null, *state.streams):
        _join(stream.clock, clock)


def _access(stream: Stream, reads: Iterable[numpy.ndarray], writes: Iterable[numpy.ndarray],
            what: str = "device work") -> None:
    """Stamp work on ``stream`` that reads and writes these arrays; raise on a race."""
    if stream.is_null:  # the legacy stream waits for the blocking streams, and they for it
        for other in state.streams:
            if not other.non_blocking:
                _join(stream.clock, other.clock)
    elif not stream.non_blocking:
        _join(stream.clock, Stream.null.clock)
    stream.tick += 1
    stream.clock[stream.serial] = stream.tick

    def check(stamp: tuple[int, int], verb: str) -> None:
        serial, tick = stamp
        if serial != stream.serial and stream.clock.get(serial, 0) < tick:
            raise RaceError(
                f"{what} on {stream} {verb} an array that work on another stream touched, with "
                "no event, synchronisation or stream rule ordering the two"
            )

    for array in reads:
        buffer = _buffer(array)
        if buffer.write is not None:
            check(buffer.write, "reads")
        buffer.reads[stream.serial] = stream.tick
    for array in writes:
        buffer = _buffer(array)
        if buffer.write is not None:
            check(buffer.write, "writes")
        for stamp in buffer.reads.items():
            check(stamp, "writes")
        buffer.write, buffer.reads = (stream.serial, stream.tick), {}


# ---------------------------------------------------------------------------- device work
def _launch(work: Callable[[], Any], reads: Iterable[numpy.ndarray] = (),
            writes: Iterable[numpy.ndarray] = (), stream: Stream | None = None) -> None:
    """Run ``work`` on ``stream`` (the current one by default), or record it if it captures."""
    stream = stream if stream is not None else get_current_stream()
    if state.capturing is not None:
        if stream is not state.capturing:
            raise CUDARuntimeError(
                "cudaErrorStreamCaptureImplicit: device work issued on another stream while a "
                "stream is capturing"
            )
        stream.recording.append(work)
        stream.touched[0].extend(reads)
        stream.touched[1].extend(writes)
        return
    _access(stream, reads, writes)
    state.launches += 1
    work()


def _allocated(array: numpy.ndarray) -> numpy.ndarray:
    """Account for a new device allocation (the allocator hook of ``using_allocator``)."""
    if array.nbytes > state.memory_limit:
        raise OutOfMemoryError(array.nbytes, 0)
    if state.allocators:
        state.allocators[-1](array.nbytes)
    return array


def _check_size(shape: Any, dtype: Any) -> None:
    shape = (shape,) if isinstance(shape, int | numpy.integer) else tuple(shape)
    nbytes = math.prod(shape) * numpy.dtype(dtype).itemsize
    if nbytes > state.memory_limit:
        raise OutOfMemoryError(nbytes, 0)


def _unwrap(value: Any) -> Any:
    """Device arrays to their host storage; a host array is refused (CuPy's TypeError)."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, numpy.ndarray):
        raise TypeError(
            f"Unsupported type {type(value)}: a NumPy array was passed where a device array "
            "is needed (copy it with cupy.asarray first)"
        )
    if isinstance(value, list | tuple):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _wrap(result: Any, originals: dict[int, ndarray]) -> Any:
    """Host results as device arrays; an array the call was given comes back as itself."""
    if isinstance(result, numpy.ndarray):
        known = originals.get(id(result))
        if known is not None:
            return known
        return ndarray._of(result)
    if isinstance(result, numpy.generic):  # CuPy reductions give 0-d arrays, not scalars
        return ndarray._of(numpy.asarray(result))
    if isinstance(result, tuple | list):
        return type(result)(_wrap(r, originals) for r in result)
    return result


def _is_new(result: Any, inputs: list[numpy.ndarray]) -> bool:
    return isinstance(result, numpy.ndarray) and not any(
        numpy.may_share_memory(result, a) for a in inputs
    )


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict, mutates: bool = False) -> Any:
    """Run the NumPy function ``fn`` as device work on device arguments.

    Work that writes into given arrays (``out=``, or ``mutates``) is launched (recorded while
    capturing); work that returns a new array computes it now and, while capturing, records
    its recomputation into that same array.
    """
    if _sizes_from_data(fn, args):
        _read_to_host(f"{getattr(fn, '__name__', fn)} (its result's size depends on the data)",
                      args[0]._a if isinstance(args[0], ndarray) else numpy.empty(0))
    host_args, host_kwargs = _unwrap(args), _unwrap(kwargs)
    devices = [v for v in (*args, *kwargs.values()) for v in _flatten(v)]
    inputs = [d._a for d in devices]
    originals = {id(d._a): d for d in devices}
    out = kwargs.get("out")
    if mutates or out is not None:
        targets = _flatten(out) if out is not None else _flatten(args[0])
        written = [t._a for t in targets]
        read = [a for a in inputs if not any(a is w for w in written)]
        result_box: list[Any] = []
        _launch(lambda: result_box.append(fn(*host_args, **host_kwargs)), read, written)
        if state.capturing is not None:
            return out if out is not None else args[0]
        return _wrap(result_box[0], originals)
    result = fn(*host_args, **host_kwargs)
    if isinstance(result, numpy.generic):
        result = numpy.asarray(result)
    if _is_new(result, inputs):
        _allocated(result)
        if state.capturing is not None:  # record its recomputation into the same memory
            _launch(lambda: numpy.copyto(result, fn(*host_args, **host_kwargs)), inputs,
                    [result])
        else:
            _launch(lambda: None, inputs, [result])  # computed above: stamp it
    return _wrap(result, originals)


_SIZED_BY_DATA = {numpy.nonzero, numpy.flatnonzero, numpy.argwhere, numpy.unique,
                  numpy.extract, numpy.compress, numpy.ndarray.nonzero, numpy.ndarray.compress}


def _sizes_from_data(fn: Callable[..., Any], args: tuple) -> bool:
    """Whether CuPy must read the data back to size the result (a count of nonzeros, unique
    values, a boolean mask), which synchronises with the host."""
    if fn in _SIZED_BY_DATA:
        return True
    if fn is operator.getitem and len(args) == 2:
        keys = args[1] if isinstance(args[1], tuple) else (args[1],)
        return any(isinstance(k, ndarray) and k.dtype == bool for k in keys)
    return False


def _flatten(value: Any) -> list[ndarray]:
    if isinstance(value, ndarray):
        return [value]
    if isinstance(value, list | tuple):
        return [d for v in value for d in _flatten(v)]
    return []


# ---------------------------------------------------------------------------- arrays
class MemoryPointer:
    """``ndarray.data``: the address, and the device-to-device copy gpunn uses."""

    def __init__(self, array: numpy.ndarray) -> None:
        self._array = array
        self.ptr = array.__array_interface__["data"][0]

    def copy_from_device_async(self, src: MemoryPointer, size: int, stream: Any = None) -> None:
        if not (self._array.flags.c_contiguous and src._array.flags.c_contiguous):
            raise ValueError("a raw memory copy between non-contiguous arrays moves bytes that "
                             "are not the arrays' elements")
        dst_bytes = self._array.reshape(-1).view(numpy.uint8)
        src_bytes = src._array.reshape(-1).view(numpy.uint8)
        if size > min(dst_bytes.size, src_bytes.size):
            raise ValueError(f"copy of {size} bytes exceeds a buffer")
        _launch(lambda: numpy.copyto(dst_bytes[:size], src_bytes[:size]), [src._array],
                [self._array], stream)


def _binary(fn: Callable[..., Any], reflected: bool = False) -> Callable[..., Any]:
    def method(self: ndarray, other: Any) -> Any:
        if fn is numpy.matmul:
            _refuse_cublas_in_capture("the @ operator")
        if isinstance(other, numpy.ndarray):
            return NotImplemented if not reflected else _run(fn, (other, self), {})
        return _run(fn, (other, self) if reflected else (self, other), {})

    return method


def _inplace(fn: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: ndarray, other: Any) -> ndarray:
        if fn is numpy.matmul:
            _refuse_cublas_in_capture("the @= operator")
        _run(fn, (self, other), {"out": self})
        return self

    return method


def _unary(fn: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: ndarray) -> Any:
        return _run(fn, (self,), {})

    return method


class ndarray:  # named as in CuPy
    """A simulated device array (storage: a host array that only device work touches)."""

    __slots__ = ("__weakref__", "_a")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape: Any, dtype: Any = float) -> None:
        _check_size(shape, dtype)
        self._a = _allocated(numpy.empty(shape, dtype))

    @classmethod
    def _of(cls, host: numpy.ndarray) -> ndarray:
        self = object.__new__(cls)
        self._a = host
        return self

    # attributes that need no device work
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray._of(self._a.T))
    data = property(lambda self: MemoryPointer(self._a))
    device = property(lambda self: Device(0))

    def __len__(self) -> int:
        return len(self._a)

    def __repr__(self) -> str:
        return f"<simulated device array shape={self.shape} dtype={self.dtype}>"

    # device-to-host reads: explicit, counted, refused while capturing
    def get(self, stream: Any = None) -> numpy.ndarray:
        _read_to_host("ndarray.get()", self._a)
        return self._a.copy()

    def item(self) -> Any:
        _read_to_host("ndarray.item()", self._a)
        return self._a.item()

    def tolist(self) -> Any:
        _read_to_host("ndarray.tolist()", self._a)
        return self._a.tolist()

    def __float__(self) -> float:
        _read_to_host("float(ndarray)", self._a)
        return float(self._a)

    def __int__(self) -> int:
        _read_to_host("int(ndarray)", self._a)
        return int(self._a)

    def __bool__(self) -> bool:
        _read_to_host("bool(ndarray)", self._a)
        return bool(self._a)

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly."
        )

    # NumPy protocols: ufuncs and functions called on device arrays run as device work
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if "out" in kwargs and isinstance(kwargs["out"], tuple) and len(kwargs["out"]) == 1:
            kwargs["out"] = kwargs["out"][0]
        return _run(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func: Any, types: Any, args: tuple, kwargs: dict) -> Any:
        return _run(func, args, kwargs, mutates=func in _MUTATING_FUNCTIONS)

    # indexing
    def __getitem__(self, key: Any) -> Any:
        return _run(operator.getitem, (self, key), {})

    def __setitem__(self, key: Any, value: Any) -> None:
        _run(operator.setitem, (self, key, value), {}, mutates=True)

    def fill(self, value: Any) -> None:
        _run(numpy.ndarray.fill, (self, value), {}, mutates=True)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or not callable(getattr(numpy.ndarray, name, None)):
            raise AttributeError(name)
        _require_name(state.ndarray_names, name, "cupy.ndarray")
        method = getattr(numpy.ndarray, name)
        mutates = name in _MUTATING_METHODS
        return lambda *args, **kwargs: _run(method, (self, *args), kwargs, mutates=mutates)

    __neg__ = _unary(numpy.negative)
    __pos__ = _unary(numpy.positive)
    __abs__ = _unary(numpy.absolute)
    __invert__ = _unary(numpy.invert)


_MUTATING_METHODS = {"fill", "sort", "put", "partition", "resize", "setfield", "itemset"}
_MUTATING_FUNCTIONS = {numpy.copyto, numpy.put, numpy.place, numpy.putmask}

for _name, _fn in {
    "add": numpy.add, "sub": numpy.subtract, "mul": numpy.multiply,
    "truediv": numpy.true_divide, "floordiv": numpy.floor_divide, "mod": numpy.remainder,
    "pow": numpy.power, "matmul": numpy.matmul, "and": numpy.bitwise_and,
    "or": numpy.bitwise_or, "xor": numpy.bitwise_xor,
}.items():
    setattr(ndarray, f"__{_name}__", _binary(_fn))
    setattr(ndarray, f"__r{_name}__", _binary(_fn, reflected=True))
    setattr(ndarray, f"__i{_name}__", _inplace(_fn))
for _name, _fn in {
    "eq": numpy.equal, "ne": numpy.not_equal, "lt": numpy.less, "le": numpy.less_equal,
    "gt": numpy.greater, "ge": numpy.greater_equal,
}.items():
    setattr(ndarray, f"__{_name}__", _binary(_fn))


# ---------------------------------------------------------------------------- creation
def asarray(value: Any, dtype: Any = None, order: Any = None) -> ndarray:
    if isinstance(value, ndarray):
        if dtype is None or numpy.dtype(dtype) == value.dtype:
            return value
        return value.astype(dtype)
    if state.capturing is not None:  # a copy from pageable memory waits for the host
        _forbid_sync("a host-to-device copy from pageable memory")
    host = numpy.array(value, dtype=dtype, order=order or "K", copy=True)
    state.host_to_device += 1
    _launch(lambda: None, (), [_allocated(host)])  # the copy, on the current stream
    return ndarray._of(host)


def array(value: Any, dtype: Any = None, copy: bool = True, order: Any = None) -> ndarray:
    if isinstance(value, ndarray):
        return value.astype(value.dtype if dtype is None else dtype, copy=True)
    return asarray(value, dtype=dtype, order=order)


def asnumpy(value: Any) -> numpy.ndarray:
    return value.get() if isinstance(value, ndarray) else numpy.asarray(value)


def _creation(fill: Callable[[numpy.ndarray], None] | None) -> Callable[..., ndarray]:
    def create(shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> ndarray:
        _check_size(shape, dtype)
        host = _allocated(numpy.empty(shape, dtype))
        if fill is not None:
            _launch(functools.partial(fill, host), (), [host])
        return ndarray._of(host)

    return create


empty = _creation(None)
zeros = _creation(lambda a: a.fill(0))
ones = _creation(lambda a: a.fill(1))


def full(shape: Any, fill_value: Any, dtype: Any = None) -> ndarray:
    dtype = numpy.result_type(fill_value) if dtype is None else dtype
    array_ = empty(shape, dtype)
    array_.fill(fill_value)
    return array_


#: CuPy functions that call cuBLAS, which CuPy refuses while a stream captures
_CUBLAS_FUNCTIONS = frozenset({"matmul", "dot", "vdot", "inner", "tensordot", "einsum"})


def _refuse_cublas_in_capture(what: str) -> None:
    """CuPy's ``cublas.setStream`` raises this while the stream captures (CuPy 13 and 14)."""
    if state.capturing is not None:
        raise NotImplementedError(
            f"calling cuBLAS API during stream capture is currently unsupported ({what})")


def __getattr__(name: str) -> Any:
    """Every other NumPy name: types and constants as they are, functions as device work."""
    _require_name(state.cupy_names, name, "module 'cupy'")
    value = getattr(numpy, name)
    if isinstance(value, type) or not callable(value):
        return value
    if isinstance(value, numpy.ufunc):
        return _Ufunc(value, refused_in_capture=name in _CUBLAS_FUNCTIONS)

    def function(*args: Any, **kwargs: Any) -> Any:
        if name in _CUBLAS_FUNCTIONS:
            _refuse_cublas_in_capture(f"cupy.{name}")
        return _run(value, args, kwargs, mutates=value in _MUTATING_FUNCTIONS)

    return functools.wraps(value)(function)


class _Ufunc:
    def __init__(self, ufunc: numpy.ufunc, refused_in_capture: bool = False) -> None:
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__
        self._refused_in_capture = refused_in_capture

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._refused_in_capture:
            _refuse_cublas_in_capture(f"cupy.{self.__name__}")
        return _run(self._ufunc, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._ufunc, name)
        return lambda *args, **kwargs: _run(method, args, kwargs)


# ---------------------------------------------------------------------------- kernels
def _params(text: str) -> list[tuple[bool, str, str]]:
    from gpunn.backend.kernels import _split_params

    return _split_params(text)


_TYPE_NAMES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
}


def _is_placeholder(type_name: str) -> bool:
    """``T`` and other single letters: a type bound to a dtype by the call's arrays. Any
    other word must name a type, as in CuPy."""
    if type_name in _TYPE_NAMES:
        return False
    if len(type_name) == 1 and type_name.isalpha():
        return True
    raise TypeError(f"unknown parameter type {type_name!r}: a dtype name, or one letter for "
                    "a type the arrays decide")


def _check_arguments(
    kernel: str, params: list[tuple[bool, str, str]], args: tuple
) -> list[tuple[int, ...]]:
    """The argument checks of a CuPy kernel call, with gpunn's typed-scalar rule; returns the
    shapes of the array arguments that broadcast (those not ``raw``)."""
    if len(args) != len(params):
        raise TypeError(f"{kernel}: {len(args)} arguments given, {len(params)} parameters")
    bound: dict[str, numpy.dtype] = {}
    by_arrays: set[str] = set()  # CuPy decides a placeholder's type from arrays alone
    shapes = []
    for (raw, type_name, name), arg in zip(params, args, strict=True):
        if isinstance(arg, numpy.ndarray):
            raise TypeError(f"{kernel}: argument {name!r} is a host (NumPy) array")
        if isinstance(arg, ndarray):
            dtype = arg.dtype
            if not raw:
                shapes.append(arg.shape)
            if _is_placeholder(type_name):
                by_arrays.add(type_name)
            elif dtype != numpy.dtype(type_name):
                raise TypeError(f"{kernel}: type is mismatched: {name!r} is {dtype}, not "
                                f"{type_name}")
        elif isinstance(arg, numpy.generic):
            dtype = arg.dtype
        elif isinstance(arg, bool | int | float):
            if _is_placeholder(type_name):
                raise TypeError(
                    f"{kernel}: argument {name!r} of type {type_name} is a Python "
                    f"{type(arg).__name__}; pass a NumPy scalar or 0-d array of its dtype"
                )
            continue
        else:
            raise TypeError(f"{kernel}: unsupported argument {name!r}: {type(arg)}")
        if _is_placeholder(type_name):
            if bound.setdefault(type_name, dtype) != dtype:
                raise TypeError(
                    f"{kernel}: type is mismatched: {name!r} is {dtype}, {type_name} is "
                    f"{bound[type_name]}"
                )
        elif not numpy.can_cast(dtype, type_name, "same_kind"):
            raise TypeError(f"{kernel}: argument {name!r} is {dtype}, not {type_name}")
    if set(bound) - by_arrays:
        raise TypeError(f"{kernel}: the type of {sorted(set(bound) - by_arrays)} is decided by "
                        "array arguments only, and none of them has it")
    return shapes


def _kernel_work(spec: Any, host: list) -> Callable[[], None]:
    """The kernel's work on host arrays: its NumPy reference, or (``compiled_kernels``) its
    CUDA text compiled for the CPU (``tests/host_kernels.py``)."""
    if not state.compiled_kernels:
        return lambda: spec.reference(*host)
    import host_kernels  # beside this file

    typed = [a.dtype for (_, t, _), a in zip(_params(spec.in_params) + _params(spec.out_params),
                                             host, strict=True)
             if t == "T" and isinstance(a, numpy.ndarray | numpy.generic)]
    dtype = typed[0].name if typed else "float64"
    return lambda: host_kernels.run(spec, list(host), dtype)


def _device_arrays(args: Iterable[Any]) -> list[numpy.ndarray]:
    return [a._a for a in args if isinstance(a, ndarray)]


def _spec(kernel_name: str, specs: dict[str, Any]) -> Any:
    if not kernel_name.startswith("gpunn_") or kernel_name[6:] not in specs:
        raise ValueError(f"the simulated GPU knows no kernel named {kernel_name!r}")
    return specs[kernel_name[6:]]


class ElementwiseKernel:
    def __init__(self, in_params: str, out_params: str, operation: str,
                 name: str = "kernel", **options: Any) -> None:
        from gpunn.backend.kernels import ELEMENTWISE

        self.spec = _spec(name, ELEMENTWISE)
        self.name = name
        self.n_in = len(_params(in_params))
        self.params = _params(in_params) + _params(out_params)
        if (in_params, out_params, operation) != (
            self.spec.in_params, self.spec.out_params, self.spec.body
        ):
            raise ValueError(f"{name}: built from another source than its spec")

    def __call__(self, *args: Any, size: Any = None, block_size: Any = None) -> Any:
        shapes = _check_arguments(self.name, self.params, args)
        n_out = len(self.params) - self.n_in
        broadcast = numpy.broadcast_shapes(*shapes) if shapes else ()
        for (raw, _, name), out in zip(self.params[self.n_in :], args[self.n_in :], strict=True):
            if not raw and out.shape != broadcast:
                raise ValueError(
                    f"{self.name}: output {name!r} has shape {out.shape}, the arguments "
                    f"broadcast to {broadcast}"
                )
        host = _unwrap(args)
        _launch(_kernel_work(self.spec, host), _device_arrays(args[: self.n_in]),
                _device_arrays(args[self.n_in :]))
        outs = args[self.n_in :]
        return outs[0] if n_out == 1 else outs


class ReductionKernel:
    def __init__(self, in_params: str, out_params: str, map_expr: str, reduce_expr: str,
                 post_map_expr: str, identity: str, name: str = "reduce_kernel",
                 **options: Any) -> None:
        from gpunn.backend.kernels import REDUCTIONS

        self.spec = _spec(name, REDUCTIONS)
        self.name = name
        self.params = _params(in_params) + _params(out_params)

    def __call__(self, *args: Any, axis: Any = None, keepdims: bool = False) -> Any:
        _check_arguments(self.name, self.params, args)
        if args[-1].shape != ():
            raise ValueError(f"{self.name}: a full reduction writes a 0-d output")
        host = _unwrap(args)
        _launch(_kernel_work(self.spec, host), _device_arrays(args[:-1]), [args[-1]._a])
        return args[-1]


class RawModule:
    def __init__(self, *, code: str = "", options: tuple = (),
                 name_expressions: tuple = (), **kwargs: Any) -> None:
        if not isinstance(options, tuple):
            raise TypeError(f"options must be a tuple, got {type(options).__name__}")
        self.name_expressions = tuple(name_expressions)

    def get_function(self, expression: str) -> _RowKernel:
        if expression not in self.name_expressions:
            raise KeyError(f"{expression!r} was not among the module's name_expressions")
        return _RowKernel(expression)


class _RowKernel:
    """A row kernel (one block per row, or one block for the batch): run its reference."""

    TYPES: ClassVar = {"float": numpy.dtype(numpy.float32), "double": numpy.dtype(numpy.float64)}

    def __init__(self, expression: str) -> None:
        from host_kernels import ROW_REFERENCES  # beside this file

        self.name, template = expression.rstrip(">").split("<")
        self.dtype = self.TYPES[template]
        self.reference = ROW_REFERENCES[self.name]

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
        if not all(isinstance(v, tuple) for v in (grid, block, args)):
            raise TypeError(f"{self.name}: grid, block and args must be tuples")
        z, other, out, rows, cols, lowest = args
        arrays = (z, other, out)
        if not all(isinstance(a, ndarray) and a.dtype == self.dtype for a in arrays):
            raise TypeError(f"{self.name}: the three arrays must be {self.dtype} device arrays")
        if not (isinstance(rows, numpy.int64) and isinstance(cols, numpy.int64)):
            raise TypeError(f"{self.name}: rows and cols must be numpy.int64")
        if z.shape != (rows, cols):
            raise ValueError(f"{self.name}: z is {z.shape}, rows × cols is {(rows, cols)}")
        for array in arrays:  # CuPy passes an array to a RawKernel as its data pointer alone
            if not array.flags.c_contiguous:
                raise ValueError(
                    f"{self.name}: an array of shape {array.shape} with strides "
                    f"{array.strides} is not C-contiguous; the kernel would read it as if it were"
                )
        softmax = self.name == "gpunn_bias_softmax"
        want = ((cols,), z.shape) if softmax else (z.shape, ())
        if (other.shape, out.shape) != want:
            raise ValueError(f"{self.name}: arguments of shapes {other.shape}, {out.shape}")
        if not isinstance(lowest, numpy.generic) or lowest.dtype != self.dtype:
            raise TypeError(f"{self.name}: lowest must be a {self.dtype} scalar")
        threads = block[0]
        if threads & (threads - 1) or not 32 <= threads <= 1024:
            raise ValueError(f"{self.name}: a block of {threads} threads (a power of two ≥ 32)")
        if shared_mem != threads * self.dtype.itemsize:
            raise ValueError(f"{self.name}: {shared_mem} bytes of shared memory for {threads}")
        if not 1 <= grid[0] <= 65535:
            raise ValueError(f"{self.name}: a grid of {grid[0]} blocks")
        host = _unwrap(args)
        reads, writes = ([other], [z, out]) if softmax else ([z, other], [out])
        if state.compiled_kernels:
            import host_kernels  # beside this file

            def work() -> None:
                host_kernels.run_row(self.name, host, self.dtype.name, grid[0], threads)
        else:
            def work() -> None:
                self.reference(*host)
        _launch(work, _device_arrays(reads), _device_arrays(writes))


# ---------------------------------------------------------------------------- cuda
class Event:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.time: float | None = None
        self.clock: dict[int, int] = {}

    def record(self, stream: Stream | None = None) -> None:
        stream = stream if stream is not None else get_current_stream()
        self.time = time.perf_counter()
        self.clock = dict(stream.clock)

    def synchronize(self) -> None:
        _forbid_sync("Event.synchronize()")
        _host_waits_for(self.clock)


_stream_serials = itertools.count(1)


class Stream:
    null: Stream

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False):
        self.is_null = null
        self.non_blocking = non_blocking
        self.serial = next(_stream_serials)
        self.tick = 0
        self.clock: dict[int, int] = {}  # the last work of each stream that this one is after
        self.recording: list[Callable[[], Any]] = []
        self.touched: tuple[list, list] = ([], [])  # arrays read and written while capturing
        if not null:
            state.streams.add(self)

    def __repr__(self) -> str:
        return "the legacy stream" if self.is_null else f"stream {self.serial}"

    def __enter__(self) -> Stream:
        state.stack.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        state.stack.pop()

    def record(self, event: Event | None = None) -> Event:
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event: Event) -> None:
        _join(self.clock, event.clock)

    def synchronize(self) -> None:
        _forbid_sync("Stream.synchronize()")
        _host_waits_for(self.clock)

    def begin_capture(self, mode: Any = None) -> None:
        if self.is_null:
            raise CUDARuntimeError("cudaErrorStreamCaptureUnsupported: the legacy stream")
        if state.capturing is not None:
            raise CUDARuntimeError("cudaErrorIllegalState: a stream is already capturing")
        state.capturing, self.recording, self.touched = self, [], ([], [])
        state.capture_invalidated = False

    def end_capture(self) -> Graph:
        if state.capturing is not self:
            raise CUDARuntimeError("cudaErrorStreamCaptureInvalidated: not capturing")
        state.capturing = None
        if state.capture_invalidated:
            raise CUDARuntimeError("cudaErrorStreamCaptureInvalidated: an operation the "
                                   "capture does not permit ran during it")
        return Graph(self.recording, *self.touched)


class Graph:
    def __init__(self, work: list[Callable[[], Any]], reads: list, writes: list) -> None:
        self.work = list(work)
        self.reads, self.writes = list(reads), list(writes)

    def launch(self, stream: Stream | None = None) -> None:
        def replay() -> None:
            for work in self.work:
                work()

        state.graph_launches += 1
        _launch(replay, self.reads, self.writes, stream)


def get_current_stream() -> Stream:
    return state.stack[-1] if state.stack else Stream.null


class Device:
    def __init__(self, device: int = 0) -> None:
        self.id = device

    def synchronize(self) -> None:
        _forbid_sync("Device.synchronize()")
        everything: dict[int, int] = {}
        for stream in (Stream.null, *state.streams):
            _join(everything, stream.clock)
        _host_waits_for(everything)

    def use(self) -> None:
        pass

    compute_capability = property(lambda self: state.compute_capability)


class _Pool:
    def malloc(self, size: int) -> object:
        return object()

    def free_bytes(self) -> int:
        return 0


_POOL = _Pool()


def get_default_memory_pool() -> _Pool:
    return _POOL


@contextlib.contextmanager
def using_allocator(allocator: Callable[[int], Any] | None = None) -> Iterator[None]:
    state.allocators.append(allocator or _POOL.malloc)
    try:
        yield
    finally:
        state.allocators.pop()


def get_elapsed_time(start: Event, stop: Event) -> float:
    return 1000.0 * ((stop.time or 0.0) - (start.time or 0.0))


runtime = types.SimpleNamespace(
    CUDARuntimeError=CUDARuntimeError,
    getDeviceCount=lambda: 1,
    getDeviceProperties=lambda device: {
        "name": DEVICE_NAME.encode(), "totalGlobalMem": state.memory_limit,
        "major": 9, "minor": 0, "multiProcessorCount": 1,
    },
    memGetInfo=lambda: (state.memory_limit, state.memory_limit),
    runtimeGetVersion=lambda: 13000,
    driverGetVersion=lambda: 13000,
)
memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
cuda = types.SimpleNamespace(
    Stream=Stream, Event=Event, Device=Device, Graph=Graph, runtime=runtime, memory=memory,
    get_current_stream=get_current_stream, using_allocator=using_allocator,
    get_elapsed_time=get_elapsed_time, MemoryPointer=MemoryPointer,
)

_routines_linalg = types.SimpleNamespace(  # CuPy's values (cupy/_core/_routines_linalg.pxd)
    COMPUTE_TYPE_TBD=0, COMPUTE_TYPE_DEFAULT=1, COMPUTE_TYPE_PEDANTIC=2, COMPUTE_TYPE_FP16=3,
    COMPUTE_TYPE_FP32=4, COMPUTE_TYPE_FP64=5, COMPUTE_TYPE_BF16=6, COMPUTE_TYPE_TF32=7,
)


def _set_compute_type(dtype: Any, compute_type: int) -> None:
    """As CuPy's: BF16 and TF32 need compute capability 8.0 (CuPy warns and sets DEFAULT
    below it); any other value than the constants is refused."""
    L = _routines_linalg
    if compute_type in (L.COMPUTE_TYPE_BF16, L.COMPUTE_TYPE_TF32):
        if int(state.compute_capability) < 80:
            import warnings

            warnings.warn("COMPUTE_TYPE_BF16 and COMPUTE_TYPE_TF32 are only available on GPUs "
                          "with compute capability 8.0 or higher. COMPUTE_TYPE_DEFAULT will be "
                          "used instead.", stacklevel=2)
            compute_type = L.COMPUTE_TYPE_DEFAULT
    elif compute_type not in range(L.COMPUTE_TYPE_TBD, L.COMPUTE_TYPE_FP64 + 1):
        raise ValueError(f"Unknown compute type: {compute_type}")
    state.compute_type[numpy.dtype(dtype).str] = compute_type


def _get_compute_type(dtype: Any) -> int:
    """As CuPy's: an unset type becomes DEFAULT (TF32 for float32 under CUPY_TF32 > 0)."""
    key = numpy.dtype(dtype).str
    if state.compute_type.get(key, 0) == _routines_linalg.COMPUTE_TYPE_TBD:
        import os

        tf32 = numpy.dtype(dtype).char in "fF" and int(os.getenv("CUPY_TF32", "0")) > 0
        _set_compute_type(dtype, _routines_linalg.COMPUTE_TYPE_TF32 if tf32
                          else _routines_linalg.COMPUTE_TYPE_DEFAULT)
    return state.compute_type[key]


_core = types.SimpleNamespace(
    _routines_linalg=_routines_linalg,
    set_compute_type=_set_compute_type,
    get_compute_type=_get_compute_type,
)


@contextlib.contextmanager
def _allow_synchronize(allow: bool) -> Iterator[None]:
    before, state.allow_sync = state.allow_sync, bool(allow)
    try:
        yield
    finally:
        state.allow_sync = before


cupyx = types.SimpleNamespace(allow_synchronize=_allow_synchronize)


# ---------------------------------------------------------------------------- installing
def _own_cublas_gemm() -> Callable[..., None]:
    """gpunn's own cuBLAS product on the simulated GPU: the host model of ``cublasGemmEx``
    (``tests/host_blas.py``) run as device work on the current stream, so it is recorded while
    a stream captures; each call's compute type is kept in :attr:`State.gemm_compute_types`."""
    import host_blas

    from gpunn.backend.cuda import gemm_compute_type

    def gemm(plan: Any, a: ndarray, b: ndarray, out: ndarray) -> None:
        state.gemm_compute_types.append(gemm_compute_type(a.dtype))
        _launch(lambda: host_blas.gemm(plan, a._a, b._a, out._a), [a._a, b._a], [out._a])

    return gemm


@contextlib.contextmanager
def install(compiled_kernels: bool = False) -> Iterator[State]:
    """Put the simulation in the place of CuPy for gpunn (and ``import cupy``), freshly reset;
    yields its :class:`State`. Everything is put back on exit. ``compiled_kernels``: the fused
    kernels run their CUDA text compiled for the CPU instead of their NumPy references."""
    from gpunn import backend
    from gpunn.backend import cuda as cuda_module
    from gpunn.backend import cupy_ops
    from gpunn.backend import kernels as K

    global state
    state = State()
    state.compiled_kernels = compiled_kernels
    Stream.null = Stream(null=True)
    real = cuda_module.cupy
    if real is not None:
        state.cupy_names = set(dir(real))
        state.ndarray_names = set(dir(real.ndarray))
    module = sys.modules[__name__]
    patches = [
        (cuda_module, "cupy", module), (cuda_module, "cupyx", cupyx),
        (cuda_module, "_IMPORT_ERROR", None),
        (K, "cupy", module), (cupy_ops, "cupy", module), (cupy_ops.CupyOps, "xp", module),
        (cupy_ops, "own_cublas_gemm", _own_cublas_gemm),
    ]
    modules = {"cupy": module, "cupy._core": _core,
               "cupy._core._routines_linalg": _routines_linalg, "cupyx": cupyx}
    saved = [(obj, name, obj.__dict__.get(name, _MISSING)) for obj, name, _ in patches]
    saved_modules = {name: sys.modules.get(name) for name in modules}
    caches = (K._build_elementwise, K._build_reduction, K.row_module,
              cuda_module.unavailable_reason, backend._backend, backend._auto_backend)

    def clear() -> None:
        for cache in caches:
            cache.cache_clear()

    clear()
    for obj, name, value in patches:
        setattr(obj, name, value)
    sys.modules.update(modules)
    try:
        yield state
    finally:
        for obj, name, value in saved:
            if value is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, value)
        for name, value in saved_modules.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
        clear()


_MISSING = object()
