"""What an allreduce costs a data-parallel step on 2 CPU ranks (docs/scaling.md).

    mpiexec -n 2 python scripts/scaling_check.py [--configs mlp-b32,wide-b1024] [--repeats 5]

Use the ``mpiexec`` of the MPI that mpi4py was built against (for ``gpunn[mpi]``: the ``mpich``
wheel's, in the same environment's ``bin/``). Every rank builds the network of each benchmark
configuration of ``docs/design.md`` (``gpunn.bench``'s networks and synthetic data, on the
device) and times, per step, over epochs of ``gpunn.train.run_epoch``:

* the step with the real communicator (``connect("mpi", "numpy")``);
* the same shares with an ``allreduce_sum`` that returns its argument unchanged;
* the allreduce of the gradient buffer alone, in a loop.

Each figure is the slowest rank's time, the median over ``--repeats`` interleaved repeats.
OpenBLAS gets one thread per rank (``OPENBLAS_NUM_THREADS=1``, set here before NumPy loads
unless already set), so that the 2 ranks do not oversubscribe 2 cores. Rank 0 prints a
Markdown table, with the load average before and after (the "after" figure includes the 2
ranks' own load, up to 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy

from gpunn.bench.configs import BenchConfig, get_configs
from gpunn.bench.contenders import SyntheticData, make_network
from gpunn.bench.runner import DATA_BYTES, TARGET_S
from gpunn.bench.sysinfo import blas_threads
from gpunn.distributed import connect
from gpunn.optim import make_optimizer
from gpunn.train import run_epoch

DEFAULT_CONFIGS = "mlp-b32,mlp-b128,mlp-b1024,wide-b1024"
#: the model column: P bytes at a copy-and-sum bandwidth of 2 to 3.5 GB/s
MODEL_GBPS = (3.5, 2.0)


class WithoutAllreduce:
    """``comm`` whose ``allreduce_sum`` returns its argument: each rank steps on its share only
    (the replicas then drift apart, which does not change the time of a step)."""

    def __init__(self, comm: Any) -> None:
        self._comm = comm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._comm, name)

    def allreduce_sum(self, array: Any) -> Any:
        return array


def slowest(comm: Any, seconds: float) -> float:
    """The largest of the ranks' ``seconds``."""
    return comm.comm.allreduce(seconds, op=comm.MPI.MAX)


def time_epoch(comm: Any, step_comm: Any, net: Any, data: tuple, opt: Any, batch: int,
               epoch: int) -> float:
    """Seconds per step of one epoch over ``data``, the slowest rank's, ranks started together."""
    Xd, Yd = data
    comm.barrier()
    start = time.perf_counter()
    run_epoch(net, Xd, Yd, opt, batch, True, 0, epoch, step_comm)
    return slowest(comm, time.perf_counter() - start) / (Xd.shape[0] // batch)


def time_allreduce(comm: Any, grads: Any, calls: int) -> float:
    """Seconds per allreduce of the gradient buffer (zeroed, so that sums stay finite)."""
    grads[...] = 0
    comm.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        comm.allreduce_sum(grads)
    return slowest(comm, time.perf_counter() - start) / calls


def measure(comm: Any, cfg: BenchConfig, repeats: int, target_s: float) -> dict[str, float]:
    """Median seconds per step with and without the allreduce, and of the allreduce alone."""
    net = make_network(cfg, "numpy", seed=0)
    opt = make_optimizer("sgd", cfg.lr)
    rows = max(4 * cfg.batch, DATA_BYTES["cpu"] // (4 * cfg.layers[0]))
    synthetic = SyntheticData(cfg.layers[0], cfg.layers[-1], rows, seed=0)
    X, Y = synthetic.for_gpunn(net.backend)
    # 2-step epochs: the first allocates the workspaces, the second sizes the timed epochs
    head = (X[: 2 * cfg.batch], Y[: 2 * cfg.batch])
    probe = [time_epoch(comm, comm, net, head, opt, cfg.batch, 0) for _ in range(2)][-1]
    steps = int(min(rows // cfg.batch, max(3, round(target_s / probe))))
    steps = comm.comm.bcast(steps, root=0)
    data = (X[: steps * cfg.batch], Y[: steps * cfg.batch])
    without = WithoutAllreduce(comm)
    time_epoch(comm, without, net, data, opt, cfg.batch, 0)  # warm-up of the timed shapes
    times: dict[str, list[float]] = {"step": [], "alone": [], "allreduce": []}
    for r in range(1, repeats + 1):  # interleaved, so that all three meet the same moments
        times["step"].append(time_epoch(comm, comm, net, data, opt, cfg.batch, r))
        times["alone"].append(time_epoch(comm, without, net, data, opt, cfg.batch, r))
        times["allreduce"].append(time_allreduce(comm, net.grads, max(steps, 10)))
    result = {k: statistics.median(v) for k, v in times.items()}
    result.update(steps=steps, nbytes=net.grads.nbytes)
    return result


def ms(seconds: float) -> str:
    """Milliseconds with 3 significant digits (thousands separated)."""
    v = seconds * 1e3
    return f"{v:,.0f} ms" if v >= 100 else f"{v:.3g} ms"


def table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| config | step, 2 ranks | step, no allreduce | difference | allreduce alone "
             "| model: P / 2-3.5 GB/s |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        diff = r["step"] - r["alone"]
        lo, hi = (r["nbytes"] / (gbps * 1e9) for gbps in MODEL_GBPS)
        lines.append(
            f"| {name} ({r['nbytes'] / 1e6:.3g} MB) | {ms(r['step'])} | {ms(r['alone'])} "
            f"| {ms(diff)} ({100 * diff / r['alone']:+.0f}%) "
            f"| {ms(r['allreduce'])} ({100 * r['allreduce'] / r['step']:.0f}% of a step) "
            f"| {ms(lo)[:-3]}-{ms(hi)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help=f"benchmark configurations (default {DEFAULT_CONFIGS})")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per variant")
    parser.add_argument("--target-s", type=float, default=TARGET_S[False],
                        help="seconds one timed epoch aims at (at least 3 steps)")
    args = parser.parse_args(argv)
    configs = get_configs(args.configs)
    load_before = os.getloadavg()
    comm = connect("mpi", "numpy")
    if comm.size < 2:
        print("run under mpiexec -n 2 (see the docstring)", file=sys.stderr)
        return 2
    results = {}
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for cfg in configs:
            results[cfg.name] = measure(comm, cfg, args.repeats, args.target_s)
            if comm.is_root:
                print(f"{cfg.name}: {results[cfg.name]['steps']} steps per epoch",
                      file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    if comm.is_root:
        version = " ".join(comm.MPI.Get_library_version().split()[:3])
        print(f"{comm.size} ranks, {os.cpu_count()} cores, {version}, "
              f"BLAS threads per rank: {blas_threads()}, median of {args.repeats} repeats")
        print(f"load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}"
              f"; after: {', '.join(f'{v:.2f}' for v in load_after)} (includes these ranks)\n")
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
