"""Data-parallel training over MPI equals single-process training: run under mpiexec.

    mpiexec -n 2 python tests/mpi_equivalence.py            # CPU ranks over MPI
    mpiexec -n 2 python tests/mpi_equivalence.py nccl       # one rank per GPU over NCCL
    mpiexec -n 2 python tests/mpi_equivalence.py simulated  # the CuPy backend over MPI, each
                                                            # rank on a simulated GPU

Every rank trains the same network with ``comm=connect("mpi")`` (each taking its share of every
global batch) and, locally, a reference copy as one process with the same global batch; the
weights, the per-epoch losses and the distributed evaluation must agree up to float rounding,
and all ranks must end with identical weights. Rank 0 prints one line per case; the exit status
is 0 only when every case passed on every rank. tests/test_distributed.py runs this.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpunn
from gpunn.distributed import (
    SingleProcess,
    connect,
    evaluate_distributed,
    verify_replicas,
)

# (name, sizes, activation, output, loss, dtype, n samples, batch, optimizer, tolerance)
CASES = [
    ("seed-like, uneven last batch", [12, 8, 3], "sigmoid", "sigmoid", "mse", "float64",
     53, 10, "sgd", 1e-12),
    ("batch 1: one rank idle every step", [6, 5, 2], "tanh", "softmax", "cross_entropy",
     "float64", 9, 1, "momentum", 1e-12),
    ("odd batch, adam", [10, 16, 16, 4], "relu", "softmax", "cross_entropy", "float64",
     77, 7, "adam", 1e-10),
    ("float32 mlp", [20, 32, 5], "relu", "softmax", "cross_entropy", "float32",
     128, 32, "sgd", 2e-5),
]  # fmt: skip


def run_case(comm, case: tuple, backend: str) -> tuple[bool, str]:
    name, sizes, act, out, loss, dtype, n, batch, opt, tol = case
    rng = numpy.random.default_rng(7)
    X = rng.random((n, sizes[0]))
    y = rng.integers(0, sizes[-1], n)
    Xv, yv = rng.random((n // 2 + 1, sizes[0])), rng.integers(0, sizes[-1], n // 2 + 1)
    options = dict(epochs=3, batch_size=batch, optimizer=opt, lr=0.1, progress=False, seed=3)

    def build() -> gpunn.Network:
        return gpunn.Network(sizes, act, out, loss, backend=backend, dtype=dtype, seed=11)

    net, ref = build(), build()
    verify_replicas(comm, net, n, batch, options["seed"])
    history = net.fit(X, y, comm=comm, **options)
    ref_history = ref.fit(X, y, **options)

    problems = []
    worst = max(
        float(numpy.max(numpy.abs(a - b)))
        for pair, ref_pair in zip(net.get_params(), ref.get_params(), strict=True)
        for a, b in zip(pair, ref_pair, strict=True)
    )
    if worst > tol:
        problems.append(f"weights differ from one process by {worst:.3g} > {tol:g}")
    losses, ref_losses = numpy.array(history["loss"]), numpy.array(ref_history["loss"])
    if not numpy.allclose(losses, ref_losses, rtol=tol * 10, atol=tol):
        problems.append(f"epoch losses {losses} != single-process {ref_losses}")
    Xvd, yvd = net.device_inputs(Xv), net.device_targets(yv, Xv.shape[0])
    shared, alone = evaluate_distributed(net, Xvd, yvd, comm), net.evaluate(Xv, yv)
    if abs(shared["loss"] - alone["loss"]) > tol * 10 or shared["accuracy"] != alone["accuracy"]:
        problems.append(f"evaluate_distributed {shared} != evaluate {alone}")
    try:
        verify_replicas(comm, net)  # bitwise-identical weights on every rank
    except gpunn.InputError as exc:
        problems.append(str(exc))
    detail = "; ".join(problems) or f"max |Δw| = {worst:.2g}"
    return not problems, f"{name}: {detail}"


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "mpi"
    if mode == "simulated":
        import simulated_cupy  # beside this file

        with simulated_cupy.install():
            return run_all("mpi", "cupy")
    return run_all(mode, "cupy" if mode == "nccl" else "numpy")


def run_all(engine: str, backend: str) -> int:
    comm = connect(engine, backend)
    if isinstance(comm, SingleProcess):
        print("not launched by mpiexec: run `mpiexec -n 2 python tests/mpi_equivalence.py`")
        return 2
    failed = 0
    for case in CASES:
        try:
            ok, line = run_case(comm, case, backend)
        except Exception:
            traceback.print_exc()
            from mpi4py import MPI

            MPI.COMM_WORLD.Abort(3)  # the other ranks would wait in a collective for ever
        flag = comm.ops.asarray(numpy.array(0.0 if ok else 1.0))
        comm.allreduce_sum(flag)
        bad = float(comm.ops.to_host(flag)) > 0
        failed += bad
        if not ok or comm.is_root:
            status = "FAILED" if bad else "ok"
            print(f"[rank {comm.rank}/{comm.size}] {status} {line}", flush=True)
    if comm.is_root:
        print(
            f"{len(CASES) - failed}/{len(CASES)} cases: {comm.size} ranks ({engine}, {backend}) "
            "equal single-process training",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
