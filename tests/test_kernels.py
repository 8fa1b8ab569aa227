"""The fused GPU kernels' definitions, checked on the CPU.

Every kernel of :mod:`gpunn.backend.kernels` has a NumPy reference; here each reference is
compared with the reference math of :class:`gpunn.backend.ops.Ops` (the article's equations) on
random inputs, in float32 and float64. The CUDA code itself is checked as far as a machine
without a GPU allows: CuPy builds every kernel object, and ``nvcc`` (where installed) compiles
every body for float and double. ``tests/test_gpu.py`` runs the kernels on a GPU.
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess

import host_kernels as H
import numpy
import pytest

from gpunn.backend import kernels as K
from gpunn.backend.cuda import cupy
from gpunn.backend.ops import Ops
from gpunn.errors import DeviceMemoryError

DTYPES = ("float32", "float64")
REF = Ops()  # the reference kernels, on NumPy
ACTS = K.ELEMENTWISE_ACTIVATIONS


def tol(dtype):
    return (
        {"rtol": 2e-5, "atol": 2e-6}
        if numpy.dtype(dtype) == numpy.float32
        else {"rtol": 1e-12, "atol": 1e-13}
    )


def rand(rng, shape, dtype, low=-3.0, high=3.0):
    return rng.uniform(low, high, size=shape).astype(dtype)


def targets(rng, rows, cols, dtype):
    p = rng.uniform(0.05, 1.0, size=(rows, cols))
    return (p / p.sum(axis=1, keepdims=True)).astype(dtype)


@pytest.fixture
def rng():
    return numpy.random.default_rng(1234)


# ------------------------------------------------------------------------ forward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_activation_references_match_ops(rng, act, dtype):
    z, b = rand(rng, (9, 6), dtype), rand(rng, (6,), dtype)
    expected = REF.activation_forward(act, z.copy(), numpy.empty_like(z))

    a = numpy.empty_like(z)
    K.ACT[act].reference(z.copy(), a)
    numpy.testing.assert_allclose(a, expected, **tol(dtype))

    # hidden layer: a = σ(z + b), in place
    zz = z.copy()
    K.BIAS_ACT[act].reference(zz, b, zz)
    want = REF.affine_forward(z, numpy.eye(6, dtype=dtype), b, numpy.empty_like(z))
    want = REF.activation_forward(act, want, want)
    numpy.testing.assert_allclose(zz, want, **tol(dtype))

    # output layer: z ← z + b kept, a = σ(z)
    zk, ak = z.copy(), numpy.empty_like(z)
    K.BIAS_ACT_KEEP[act].reference(b, zk, ak)
    numpy.testing.assert_allclose(zk, z + b, **tol(dtype))
    numpy.testing.assert_allclose(ak, want, **tol(dtype))
    assert a.dtype == zz.dtype == ak.dtype == numpy.dtype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 10), (3, 300)])
def test_bias_softmax_reference_matches_ops(rng, shape, dtype):
    rows, cols = shape
    z, b = rand(rng, shape, dtype, -30, 30), rand(rng, (cols,), dtype)
    zk, a = z.copy(), numpy.empty_like(z)
    K.bias_softmax_reference(zk, b, a, rows, cols, numpy.dtype(dtype).type(-numpy.inf))
    zz = z + b
    numpy.testing.assert_allclose(zk, zz, **tol(dtype))
    numpy.testing.assert_allclose(a, REF.softmax(zz, numpy.empty_like(zz)), **tol(dtype))
    numpy.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------------ backward
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [a for a in ACTS if a != "identity"])
def test_activation_backward_references_match_ops(rng, act, dtype):
    a = REF.activation_forward(act, rand(rng, (8, 5), dtype), numpy.empty((8, 5), dtype))
    delta = rand(rng, (8, 5), dtype)
    expected = REF.activation_backward(act, a, delta.copy(), numpy.empty_like(a))
    got = delta.copy()
    K.ACT_BACKWARD[act].reference(a, got)
    numpy.testing.assert_allclose(got, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", ["sigmoid", "identity"])
def test_mse_delta_references_match_ops(rng, output, dtype):
    rows = 6
    z = rand(rng, (rows, 4), dtype)
    a = REF.activation_forward(output, z.copy(), numpy.empty_like(z))
    y = targets(rng, rows, 4, dtype)
    expected = REF.output_delta(output, "mse", z.copy(), a, y, 1.0 / rows, numpy.empty_like(z))
    got = numpy.empty_like(z)
    K.MSE_DELTA[output].reference(a, y, numpy.dtype(dtype).type(2.0 / rows), got)
    numpy.testing.assert_allclose(got, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_cross_entropy_delta_reference_matches_ops(rng, output, dtype):
    rows = 6
    z = rand(rng, (rows, 4), dtype)
    a = REF.activation_forward(output, z.copy(), numpy.empty_like(z))
    y = targets(rng, rows, 4, dtype)
    expected = REF.output_delta(
        output, "cross_entropy", z.copy(), a, y, 1.0 / rows, numpy.empty_like(z)
    )
    got = numpy.empty_like(z)
    K.XENT_DELTA.reference(a, y, numpy.dtype(dtype).type(1.0 / rows), got)
    numpy.testing.assert_allclose(got, expected, **tol(dtype))


# ------------------------------------------------------------------------ costs
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("output", "loss"),
    [
        ("sigmoid", "mse"),
        ("identity", "mse"),
        ("softmax", "mse"),
        ("softmax", "cross_entropy"),
        ("sigmoid", "cross_entropy"),
    ],
)
def test_cost_references_accumulate_ops_cost_sum(rng, output, loss, dtype):
    rows, cols = 11, 5
    z = rand(rng, (rows, cols), dtype, -40, 40)
    a = REF.activation_forward(output, z.copy(), numpy.empty_like(z))
    y = targets(rng, rows, cols, dtype)
    expected = 0.75 + float(REF.cost_sum(output, loss, z, a, y))
    acc = numpy.asarray(0.75, dtype=dtype)
    if loss == "mse":
        K.MSE_COST.reference(a, y, acc, acc)
    elif output == "softmax":
        K.softmax_xent_cost_reference(z, y, acc, rows, cols, numpy.dtype(dtype).type(-numpy.inf))
    else:
        K.BCE_COST.reference(z, y, acc, acc)
    assert acc.dtype == numpy.dtype(dtype) and acc.shape == ()
    numpy.testing.assert_allclose(float(acc), expected, rtol=tol(dtype)["rtol"] * 10)
    assert numpy.isfinite(acc)  # from the logits: finite even where a rounds to 0 or 1


# ------------------------------------------------------------------------ optimizers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_sgd_reference_matches_ops(rng, dtype, wd):
    p, g = rand(rng, 50, dtype), rand(rng, 50, dtype)
    want = p.copy()
    REF.sgd_update(want, g.copy(), 0.3, wd)
    t = numpy.dtype(dtype).type
    K.SGD_UPDATE.reference(g, t(0.3), t(wd), p)
    numpy.testing.assert_allclose(p, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_momentum_references_match_ops(rng, dtype, nesterov, wd):
    p, v = rand(rng, 50, dtype), numpy.zeros(50, dtype)
    want_p, want_v = p.copy(), v.copy()
    spec = K.NESTEROV_UPDATE if nesterov else K.MOMENTUM_UPDATE
    t = numpy.dtype(dtype).type
    for _ in range(3):
        g = rand(rng, 50, dtype)
        REF.momentum_update(want_p, g.copy(), want_v, 0.1, 0.9, nesterov, wd)
        spec.reference(g, t(0.1), t(0.9), t(wd), p, v)
    numpy.testing.assert_allclose(p, want_p, **tol(dtype))
    numpy.testing.assert_allclose(v, want_v, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_references_match_ops_with_the_step_on_the_device(rng, dtype, wd):
    """adam_prepare (t ← t+1 and the bias corrections) then adam_update equal Ops.adam_update
    for steps 1, 2, 3, 4, with the step count held in a 0-d int64 array."""
    n, lr, b1, b2, eps = 40, 0.01, 0.9, 0.999, 1e-8
    t = numpy.dtype(dtype).type
    p, m, v = rand(rng, n, dtype), numpy.zeros(n, dtype), numpy.zeros(n, dtype)
    want = [p.copy(), m.copy(), v.copy()]
    step = numpy.asarray(0, dtype=numpy.int64)
    c1, c2 = numpy.zeros((), dtype), numpy.zeros((), dtype)
    for k in range(1, 5):
        g = rand(rng, n, dtype)
        REF.adam_update(*want[:1], g.copy(), want[1], want[2], lr, b1, b2, eps, k, wd)
        K.ADAM_PREPARE.reference(t(lr), numpy.float64(b1), numpy.float64(b2), step, c1, c2)
        assert int(step) == k
        K.ADAM_UPDATE.reference(
            g, t(lr), t(wd), t(b1), t(1 - b1), t(b2), t(1 - b2), t(eps), c1, c2, p, m, v
        )
    for got, expected in zip((p, m, v), want, strict=True):
        numpy.testing.assert_allclose(
            got, expected, rtol=tol(dtype)["rtol"] * 5, atol=tol(dtype)["atol"]
        )


# ------------------------------------------------------------------------ data
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_references_match_ops(rng, dtype):
    src = rand(rng, (20, 3), dtype)
    order = REF.permutation(20, seed=3, epoch=1)
    got = numpy.empty((6, 3), dtype)
    K.GATHER_ROWS.reference(src, order[4:10, None], numpy.int64(3), got)
    numpy.testing.assert_array_equal(got, REF.gather_rows(src, order[4:10], numpy.empty_like(got)))

    # gather_batch + advance_cursor walk through an epoch's batches with the cursor on the device
    # (offset: where a rank's share starts in each batch)
    cursor, share = numpy.asarray(0, dtype=numpy.int64), got[:4]
    for start in range(0, 18, 6):
        K.GATHER_BATCH.reference(src, order, cursor, numpy.int64(2), numpy.int64(3), share)
        numpy.testing.assert_array_equal(share, src[order[start + 2 : start + 6]])
        REF.gather_batch(src, order, cursor, 2, out=got[:4])
        numpy.testing.assert_array_equal(got[:4], share)
        K.ADVANCE_CURSOR.reference(numpy.int64(6), numpy.int64(18), cursor)
    assert int(cursor) == 0


# ------------------------------------------------------------------------ the specs themselves
ALL_SPECS = [*K.ELEMENTWISE.values(), *K.REDUCTIONS.values()]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.name)
def test_each_reference_takes_the_kernels_arguments(spec):
    """A reference has the kernel's calling convention: one argument per kernel parameter, and
    the sample arguments (also used on the GPU) run through it in both dtypes."""
    params = K._split_params(spec.in_params) + K._split_params(spec.out_params)
    assert len(inspect.signature(spec.reference).parameters) == len(params)
    for dtype in DTYPES:
        args = H.sample_arguments(spec.name, dtype)
        assert len(args) == len(params)
        spec.reference(*args)
        outputs = args[spec.n_in :]
        assert all(numpy.isfinite(numpy.asarray(o, dtype=float)).all() for o in outputs)


@pytest.mark.parametrize("name", K.ROW_KERNEL_NAMES)
def test_row_references_take_the_sample_arguments(name):
    """A row kernel's reference runs on its sample arguments (z, other, out, rows, cols,
    lowest) and writes finite values of z's shape and dtype; the softmax rows sum to 1."""
    rows, cols = 7, 5
    for dtype in DTYPES:
        z, other, out, *sizes = H.sample_arguments(name, dtype, rows=rows, cols=cols)
        assert sizes[:2] == [rows, cols] and z.shape == (rows, cols)
        H.ROW_REFERENCES[name](z, other, out, *sizes)
        assert out.dtype == z.dtype == numpy.dtype(dtype)
        if name == "gpunn_bias_softmax":
            assert out.shape == (rows, cols) and numpy.isfinite(out).all()
            numpy.testing.assert_allclose(out.sum(axis=1), 1.0, **tol(dtype))
        else:
            assert out.shape == () and numpy.isfinite(out) and out > 0.5  # 0.5 + the cost


def test_every_kernel_body_is_typed_and_named():
    assert len({s.name for s in ALL_SPECS}) == len(ALL_SPECS)
    for spec in K.ELEMENTWISE.values():
        assert spec.body.rstrip().endswith(";"), spec.name
    assert set(K.ACT) == set(K.BIAS_ACT) == set(K.BIAS_ACT_KEEP) == set(ACTS)
    assert K.row_threads(1) == 32 and K.row_threads(100) == 128 and K.row_threads(10**6) == 256


needs_cupy = pytest.mark.skipif(cupy is None, reason="CuPy is not installed")


@needs_cupy
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.name)
def test_cupy_builds_every_kernel_without_a_gpu(spec):
    """Constructing the CuPy kernel objects checks the parameter lists (CuPy compiles the CUDA
    code on the first call, which needs a GPU)."""
    kernel = spec.build()
    assert kernel is spec.build()  # built once, cached


@needs_cupy
def test_cupy_builds_the_row_module():
    assert K.row_module() is K.row_module()
    assert K.row_kernel_expression("gpunn_bias_softmax", "float32") == "gpunn_bias_softmax<float>"


def _nvcc():
    found = shutil.which("nvcc")
    if found is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        found = "/usr/local/cuda/bin/nvcc"
    return found


def _compile(source, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc (the CUDA compiler) is not installed: the CUDA bodies are not compiled")
    path = tmp_path / "kernels.cu"
    path.write_text(source)
    return subprocess.run(
        [nvcc, "--ptx", "-arch=compute_80", "-std=c++14", "-o", str(tmp_path / "k.ptx"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvcc_compiles_every_kernel_body(dtype, tmp_path):
    """Every elementwise body, reduction expression and row kernel compiles for T = float and
    T = double (to PTX: no GPU needed)."""
    result = _compile(H.standalone_source(dtype), tmp_path)
    assert result.returncode == 0, result.stderr


def test_nvcc_check_catches_a_broken_body(tmp_path):
    source = H.standalone_elementwise("broken", "T x", "T y", "y = x + undefined_name;")
    result = _compile("typedef float T;\n#include <cstddef>\n" + source, tmp_path)
    assert result.returncode != 0


# ------------------------------------------------------------------------ CupyOps without a GPU
@needs_cupy
def test_cupy_ops_options_and_scalars_without_a_gpu(monkeypatch):
    from gpunn.backend.cupy_ops import CupyOps

    monkeypatch.setenv("GPUNN_CUDA_GRAPHS", "0")
    assert CupyOps().graphs is False
    monkeypatch.setenv("GPUNN_CUDA_GRAPHS", "1")
    assert CupyOps().graphs is True
    assert CupyOps(graphs=False).graphs is False
    monkeypatch.delenv("GPUNN_TF32", raising=False)
    ops = CupyOps()
    assert ops.tf32 is False and ops.replays_steps and ops.name == "cupy"
    s = ops.scalar(0.1, numpy.float32)
    assert isinstance(s, numpy.float32) and s == numpy.float32(0.1)
    assert isinstance(ops.scalar(3, "float64"), numpy.float64)


@needs_cupy
def test_memory_guard_names_the_batch_and_the_memory():
    from gpunn.backend.cupy_ops import CupyOps

    ops = CupyOps(graphs=False)
    with pytest.raises(DeviceMemoryError, match=r"batch of 8192 rows.*3\.0 MiB"):
        with ops.memory_guard("allocating the training buffers", 8192, 3 * 2**20):
            raise cupy.cuda.memory.OutOfMemoryError(3 * 2**20, 2**20)
    with ops.memory_guard("nothing", 1, 1):  # other errors and no error pass through
        pass
    with pytest.raises(ValueError), ops.memory_guard("x", 1, 1):
        raise ValueError("not memory")


def test_workspace_nbytes_is_what_a_workspace_allocates():
    from gpunn.backend import NumpyOps
    from gpunn.network import Workspace

    for sizes, rows, dtype in (([784, 30, 10], 10, "float32"), ([5, 7, 7, 3], 33, "float64")):
        ws = Workspace.allocate(NumpyOps(), sizes, rows, numpy.dtype(dtype))
        arrays = [*ws.A, ws.Z_out, *ws.delta, *ws.scratch, ws.X, ws.Y]
        assert Workspace.nbytes(sizes, rows, dtype) == sum(a.nbytes for a in arrays)


# ------------------------------------------------------------------------ the CUDA code, on the CPU
def _host_kernels():
    reason = H.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return H


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.name)
def test_the_cuda_code_run_on_the_cpu_matches_its_reference(spec, dtype):
    """Each elementwise and reduction kernel's CUDA text, compiled for the CPU
    (tests/host_kernels.py), computes what its NumPy reference computes."""
    H = _host_kernels()
    for rows, cols in ((1, 1), (7, 5), (33, 17)):
        want = H.sample_arguments(spec.name, dtype, rows=rows, cols=cols)
        got = [a.copy() if isinstance(a, numpy.ndarray) else a for a in want]
        H.run(spec, got, dtype)
        spec.reference(*want)
        for g, w in zip(got[spec.n_in :], want[spec.n_in :], strict=True):
            numpy.testing.assert_allclose(g, w, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (64, 31), (5, 1000), (1100, 2)])
def test_the_row_kernels_run_on_the_cpu_match_their_references(dtype, shape):
    """The softmax and softmax cross-entropy row kernels (block reductions in shared memory),
    each block's threads run as threads: fewer blocks than rows exercise the grid-stride loop,
    and more threads than columns the idle lanes."""
    H = _host_kernels()
    rows, cols = shape
    for name in K.ROW_KERNEL_NAMES:
        want = H.sample_arguments(name, dtype, rows=rows, cols=cols)
        got = [a.copy() if isinstance(a, numpy.ndarray) else a for a in want]
        if name == "gpunn_bias_softmax":
            H.run_row(name, got, dtype, grid=min(rows, 3), threads=K.row_threads(cols))
        else:
            H.run_row(name, got, dtype, grid=1, threads=K.row_threads(rows, limit=512))
        H.ROW_REFERENCES[name](*want)
        loose = {key: 10 * value for key, value in tol(dtype).items()}
        for g, w in zip(got[:3], want[:3], strict=True):
            numpy.testing.assert_allclose(g, w, **loose)
