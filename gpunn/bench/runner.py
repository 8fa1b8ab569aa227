"""``run_bench``: every contender on every backend, configuration and batch size, in one run.

For each backend: the float32 GEMM ceiling first; then, per model and batch size, all
contenders are built on the same data and initial weights, warmed up, and timed on the same
number of steps, their repeats interleaved. The per-sample baseline (slow) gets a small fixed
sample count at each configuration's own batch size (see :func:`per_configured_batch`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..backend import available_backends, get_backend, unavailable_reason
from ..errors import InputError, describe
from . import contenders as C
from .configs import BenchConfig, get_configs
from .peers import PEERS, TORCH_PEERS
from .sysinfo import machine_info
from .timing import HostTimer, Measurement, measure, measure_interleaved

SCHEMA = "gpunn-bench/1"
GPU_SWEEP = tuple(2**k for k in range(14))  # 1 .. 8192
GPU_SWEEP_QUICK = (1, 8, 64, 512, 4096, 8192)
CPU_SWEEP = (16, 64, 256, 1024)
CPU_SWEEP_QUICK: tuple[int, ...] = ()  # --quick on the CPU: each configuration's own batch
#: seconds of work one timed repeat aims at
TARGET_S = {False: 0.25, True: 0.06}
MAX_STEPS = 20000
MIN_STEPS = 3  # per timed repeat (not with --quick)
#: host bytes of synthetic X per model (the data every contender shares)
DATA_BYTES = {"cpu": 48 * 2**20, "gpu": 192 * 2**20}

#: peers timed at the selected configurations' own batch sizes only, not across the sweep:
#: compiling takes seconds per model and batch size
CONFIGURATIONS_ONLY = ("torch-compile",)
#: peers that ``quick`` leaves out unless they are named
NOT_QUICK = ("torch-compile",)


def _log_default(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_int_list(text: str | Iterable[int] | None) -> list[int] | None:
    """"1,2,4" or "1-8192" (powers of two from..to) or a list -> sorted unique ints > 0."""
    if text is None:
        return None
    if not isinstance(text, str):
        vals = [int(v) for v in text]
    else:
        vals = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-", 1))
                v = lo
                while v <= hi:
                    vals.append(v)
                    v *= 2
            else:
                vals.append(int(part))
    if any(v < 1 for v in vals):
        raise InputError(f"batch sizes must be positive integers, got {vals}")
    return sorted(set(vals))


def select_peers(peers: bool | str | Iterable[str], quick: bool = False) -> tuple[str, ...]:
    """The peers to time: ``True`` every one (under ``quick`` all but torch-compile, whose
    compilation alone takes longer than a quick run's measurements), ``False`` none, or those
    named (a list, or a comma-separated string), in the order of :data:`PEERS`."""
    if isinstance(peers, bool):
        return tuple(p for p in PEERS if peers and not (quick and p in NOT_QUICK))
    names = [n.strip() for n in peers.split(",")] if isinstance(peers, str) else list(peers)
    unknown = sorted(set(names) - set(PEERS) - {""})
    if unknown:
        raise InputError(f"unknown peer {', '.join(map(repr, unknown))}; choose among "
                         f"{', '.join(PEERS)}")
    return tuple(p for p in PEERS if p in names)


def plan_cells(configs: Sequence[BenchConfig], backend: str,
               batch_sizes: Sequence[int] | None = None, quick: bool = False
               ) -> list[BenchConfig]:
    """The (model, batch) cells to time on ``backend``: one per model and batch size.

    Explicit ``batch_sizes`` are used as given; otherwise the default sweep for the device
    plus each selected configuration's own batch. GPU-only configurations are left out on
    NumPy (a model whose only selected configurations are GPU-only is left out entirely).
    The selected configurations come first, in their order, then the rest of the sweep: a
    time budget that runs out skips sweep cells before the configurations themselves.
    """
    gpu = backend == "cupy"
    families: dict[tuple, list[BenchConfig]] = {}
    for cfg in configs:
        if cfg.gpu_only and not gpu:
            continue
        families.setdefault(cfg.model_key, []).append(cfg)
    cells: list[BenchConfig] = []
    for members in families.values():
        if batch_sizes is not None:
            batches = set(batch_sizes)
        else:
            sweep = (GPU_SWEEP_QUICK if quick else GPU_SWEEP) if gpu else (
                CPU_SWEEP_QUICK if quick else CPU_SWEEP)
            batches = set(sweep) | {c.batch for c in members}
        cells.extend(members[0].with_batch(b) for b in sorted(batches))
    own = [c for c in configs if c in cells]
    return own + [c for c in cells if c not in own]


def _row(cfg: BenchConfig, backend: str, contender: str, m: Measurement | None,
         info: dict | None = None, status: str = "ok", reason: str | None = None) -> dict:
    row: dict[str, Any] = {
        "backend": backend, "device": C.device_of(backend), "contender": contender,
        "config": cfg.name, "family": cfg.family, "batch": cfg.batch, "status": status,
    }
    if m is not None:
        d = m.as_dict()
        row.update({k: d[k] for k in ("steps", "repeats", "samples_per_s", "samples_per_s_min",
                                      "samples_per_s_max", "ms_per_step", "ms_per_step_min",
                                      "ms_per_step_max", "spread", "timer", "times_s")})
        row["gflops"] = m.samples_per_s * cfg.flops_per_sample / 1e9
    if reason:
        row["reason"] = reason
    if info:
        row["info"] = info
    return row


def _error_row(cfg: BenchConfig, backend: str, contender: str, exc: BaseException) -> dict:
    return _row(cfg, backend, contender, None, status="error", reason=describe(exc))


def _finish_rows(rows: list[dict], gemm: dict) -> None:
    """Add % of the GEMM ceiling and the ratio to PyTorch eager on the same device."""
    torch_sps = {(r["backend"], r["config"], r["batch"]): r["samples_per_s"]
                 for r in rows if r["contender"] == "torch-eager" and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        ceiling = r.get("cell_gemm_gflops") or (gemm.get(r["backend"]) or {}).get("gflops")
        r["pct_gemm"] = 100.0 * r["gflops"] / ceiling if ceiling else None
        t = torch_sps.get((r["backend"], r["config"], r["batch"]))
        r["ratio_to_torch"] = r["samples_per_s"] / t if t else None


def synthetic_data(cache: dict, cfg: BenchConfig, device: str, seed: int, max_batch: int,
                   data_bytes: int | None = None) -> C.SyntheticData:
    """The data every contender of ``cfg``'s model shares on ``device``: ``data_bytes`` of X
    (default :data:`DATA_BYTES` of the device) and at least ``max_batch`` rows, made once per
    input width, output width and device in ``cache``."""
    n_in, n_out = cfg.layers[0], cfg.layers[-1]
    n = max(max_batch, (data_bytes or DATA_BYTES[device]) // (4 * n_in))
    key = (n_in, n_out, device)
    if key not in cache:
        cache[key] = C.SyntheticData(n_in, n_out, n, seed)
    return cache[key]


def calibrate(c: C.Contender, cfg: BenchConfig, target_s: float, n_data: int,
              ceiling_gflops: float | None = None, min_steps: int = 1) -> int:
    """Steps per repeat so that the contender's repeat lasts about ``target_s``, and at least
    ``min_steps``: a repeat is one short epoch, and its once-per-epoch work (the divergence
    check, reading the loss back) is not part of a step's throughput. A step that the GEMM
    ceiling says is long needs no calibration run."""
    if ceiling_gflops:
        est = cfg.flops_per_sample * cfg.batch / (ceiling_gflops * 1e9)
        if est * 3 > target_s:
            steps = max(min_steps, math.floor(target_s / est))
            return C.canonical_steps(steps, cfg.batch, n_data)
    probe = C.canonical_steps(4, cfg.batch, n_data)
    c.run(probe)  # first call: allocation, graph capture...
    timer = HostTimer(c.timer.sync)
    timer.start()
    c.run(probe)
    per_step = max(timer.stop() / probe, 1e-7)
    steps = int(min(MAX_STEPS, max(min_steps, round(target_s / per_step))))
    return C.canonical_steps(steps, cfg.batch, n_data)


@dataclass
class _Run:
    """One run of :func:`run_bench`: its settings, and what it has measured so far."""

    configs: list[BenchConfig]
    peers: tuple[str, ...]
    quick: bool
    repeats: int
    seed: int
    target_s: float
    tf32: bool
    time_budget: float | None
    say: Callable[[str], Any]
    results: dict
    t_start: float
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict]:
        return self.results["rows"]

    @property
    def gemm(self) -> dict[str, dict]:
        return self.results["gemm"]

    @property
    def min_steps(self) -> int:
        return 1 if self.quick else MIN_STEPS

    def over_budget(self) -> bool:
        return (self.time_budget is not None
                and time.perf_counter() - self.t_start > self.time_budget)


def run_bench(configs: Iterable[str] | str | Sequence[BenchConfig] | None = None,
              backends: Iterable[str] | str | None = None,
              batch_sizes: Iterable[int] | str | None = None,
              peers: bool | str | Iterable[str] = True, quick: bool = False,
              repeats: int | None = None, seed: int = 0,
              log: Callable[[str], Any] | None = _log_default,
              target_s: float | None = None, time_budget: float | None = None,
              checkpoint: Callable[[dict], Any] | None = None,
              gemm_n: int | None = None) -> dict:
    """Measure training throughput; returns ``{"machine", "settings", "gemm", "rows", ...}``.

    configs: names (or families, or BenchConfig objects), default all of the configurations
    in ``docs/design.md``. backends: "numpy", "cupy" (default: every available one).
    batch_sizes: explicit list (default: a sweep per device plus each configuration's own
    batch). peers: which of :data:`PEERS` to time besides gpunn (see :func:`select_peers`;
    torch-compile at the configurations' own batch sizes only). quick: shorter sweep, shorter
    repeats, fewer of them, no torch-compile unless named. time_budget: seconds after which
    remaining cells are skipped (recorded as such). checkpoint: called with the results so
    far after every cell (e.g. to save them). gemm_n: size of the square GEMM measuring the
    ceiling (default 2048 CPU, 8192 GPU).
    """
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    if configs is not None and not isinstance(configs, str):
        configs = list(configs)
    if configs and all(isinstance(c, BenchConfig) for c in configs):
        cfgs = list(configs)  # type: ignore[arg-type]
    else:
        cfgs = get_configs(configs)  # type: ignore[arg-type]
    if isinstance(backends, str):
        backends = [b.strip() for b in backends.split(",") if b.strip()]
    wanted = list(backends) if backends is not None else available_backends()
    unknown = [b for b in wanted if b not in ("numpy", "cupy")]
    if unknown:
        raise InputError(f"unknown backend {unknown[0]!r}; choose numpy or cupy")
    sizes = parse_int_list(batch_sizes)  # type: ignore[arg-type]
    repeats = int(repeats) if repeats else (3 if quick else 5)
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, got {repeats}")
    chosen = select_peers(peers, quick)
    target = float(target_s) if target_s else TARGET_S[bool(quick)]
    tf32 = "cupy" in wanted and "cupy" in available_backends() and (
        get_backend("cupy").tf32_in_use())
    results: dict[str, Any] = {
        "schema": SCHEMA, "machine": machine_info(),
        "settings": {"configs": [c.name for c in cfgs], "backends": wanted,
                     "batch_sizes": sizes, "peers": list(chosen), "quick": quick,
                     "repeats": repeats, "seed": seed, "target_s_per_repeat": target,
                     "dtype": "float32", "warmup": "one untimed repeat per contender",
                     # float32 products on the GPU's tensor cores (--tf32): gpunn's, and
                     # then the PyTorch peers' too, so that the ratios compare like with like
                     "tf32": tf32,
                     "flops_per_sample": "2*sum(W) fwd + 2*sum(W) dW + 2*sum(W[1:]) dX"},
        "configs": [c.as_dict() for c in cfgs],
        "gemm": {}, "rows": [], "skipped": [],
    }
    run = _Run(cfgs, chosen, bool(quick), repeats, seed, target, tf32, time_budget, say,
               results, t_start)
    for backend in wanted:
        _run_backend(run, backend, sizes, gemm_n, checkpoint)
    results["skipped"] = [{"contender": n, "backend": b, "reason": r}
                          for (n, b), r in run.skipped.items()]
    _finish_rows(run.rows, run.gemm)
    results["elapsed_s"] = time.perf_counter() - run.t_start
    return results


def _run_backend(run: _Run, backend: str, sizes: Sequence[int] | None, gemm_n: int | None,
                 checkpoint: Callable[[dict], Any] | None) -> None:
    """The ceilings, every cell, the ceiling again and the per-sample loop on ``backend``."""
    if backend not in available_backends():
        run.skipped[("gpunn", backend)] = unavailable_reason() or "not available here"
        run.say(f"[bench] skipping backend {backend}: {run.skipped[('gpunn', backend)]}")
        return
    n_gemm = int(gemm_n) if gemm_n else C.gemm_size(backend)
    ceiling = _measure_ceilings(run, backend, n_gemm)
    # the same product again, timed in turn with the contenders of every cell, so that
    # "% of the GEMM ceiling" compares two rates measured in the same moments
    matmul = C.backend_matmul(backend, n_gemm, run.seed) if ceiling else None
    cells = plan_cells(run.configs, backend, sizes, run.quick)
    data_cache: dict = {}
    max_batch = max((c.batch for c in cells), default=1)
    for cfg in cells:
        if run.over_budget():
            run.rows.append(_row(cfg, backend, "gpunn", None, status="skipped",
                                 reason=f"time budget of {run.time_budget:g} s used up"))
            continue
        data = synthetic_data(data_cache, cfg, C.device_of(backend), run.seed, max_batch)
        built = _build_contenders(run, cfg, backend, data)
        _time_cell(run, cfg, backend, built, len(data), ceiling, matmul, n_gemm)
        if checkpoint is not None:
            _finish_rows(run.rows, run.gemm)
            checkpoint(run.results)
    if cells and ceiling:  # again after the sweep: the higher median is what it can do
        _remeasure_ceiling(run, backend, n_gemm)
    if "per-sample" in run.peers and backend == "numpy" and not run.over_budget():
        _per_sample_rows(run)


def _gemm_entry(run: _Run, backend: str, name: str, measure_it: Callable[[], dict],
                label: str) -> None:
    """``run.gemm[name]``: a GEMM rate measured on ``backend``'s device, or the error that
    stopped it (the run goes on); a :class:`~gpunn.bench.contenders.Skip` (no PyTorch, or none
    for this device) is recorded as such."""
    try:
        run.gemm[name] = measure_it()
    except C.Skip as exc:
        run.skipped[("torch", backend)] = str(exc)
        return
    except Exception as exc:  # report, keep going
        run.gemm[name] = {"error": describe(exc)}
        return
    run.say(f"[bench] {label}: {run.gemm[name]['gflops']:.1f} GFLOP/s")


def _measure_ceilings(run: _Run, backend: str, n: int) -> float | None:
    """The float32 GEMM rate of ``backend`` (the ceiling, returned), on the GPU its TF32 and
    float16 rates (what ``--tf32`` and float16 storage could reach), and PyTorch's float32
    rate on the same device when a PyTorch peer is timed."""
    options = {"repeats": run.repeats, "seed": run.seed}
    _gemm_entry(run, backend, backend, partial(C.backend_gemm, backend, n, **options),
                f"{backend} float32 GEMM {n}")
    if backend == "cupy":
        for name, extra in (("cupy-tf32", {"tf32": True}), ("cupy-float16", {"dtype": "float16"})):
            _gemm_entry(run, backend, name,
                        partial(C.backend_gemm, backend, n, **options, **extra),
                        f"{name} GEMM {n}")
    if any(p in TORCH_PEERS for p in run.peers):
        device = C.device_of(backend)
        _gemm_entry(run, backend, f"torch-{device}",
                    partial(C.torch_gemm, backend, n, repeats=run.repeats, tf32=run.tf32),
                    f"torch {device} float32 GEMM {n}")
    return run.gemm.get(backend, {}).get("gflops")


def _build_contenders(run: _Run, cfg: BenchConfig, backend: str, data: C.SyntheticData
                      ) -> list[C.Contender]:
    """gpunn and the selected PyTorch peers that run here, from the same initial weights; a
    contender that cannot run is recorded as skipped, one that fails as an error row."""
    try:
        net = C.make_network(cfg, backend, run.seed)
    except Exception as exc:
        run.rows.append(_error_row(cfg, backend, "gpunn", exc))
        return []
    makers = [("gpunn", partial(C.make_gpunn, cfg, backend, cfg.batch, data, run.seed,
                                net=net))]
    params = net.get_params()
    for name in run.peers:
        if name not in TORCH_PEERS:
            continue
        peer = TORCH_PEERS[name]
        if (backend != "cupy" and not peer.on_cpu) or (
                name in CONFIGURATIONS_ONLY and cfg not in run.configs):
            continue
        makers.append((name, partial(getattr(C, peer.maker), cfg, backend, cfg.batch, data, params,
                                     tf32=run.tf32)))
    built = []
    for name, make in makers:
        try:
            built.append(make())
        except C.Skip as exc:
            run.skipped.setdefault((name, backend), str(exc))
        except Exception as exc:
            run.rows.append(_error_row(cfg, backend, name, exc))
    return built


def _time_cell(run: _Run, cfg: BenchConfig, backend: str, built: list[C.Contender],
               n_data: int, ceiling: float | None,
               matmul: tuple[Callable[[], Any], Any] | None, n_gemm: int) -> None:
    """Calibrate the steps per repeat on the first contender that runs, warm every contender
    up with one repeat, then time them (and the GEMM) in turn: one row each."""
    steps = None
    while built and steps is None:
        try:
            steps = calibrate(built[0], cfg, run.target_s, n_data, ceiling, run.min_steps)
        except Exception as exc:
            run.rows.append(_error_row(cfg, backend, built.pop(0).name, exc))
    ready = []
    for c in built:
        try:
            c.run(steps)
            ready.append(c)
        except Exception as exc:
            run.rows.append(_error_row(cfg, backend, c.name, exc))
    if not ready:
        return
    fns, timers = [partial(c.run, steps) for c in ready], [c.timer for c in ready]
    if matmul is not None:
        fns.append(matmul[0])
        timers.append(matmul[1])
    ms = measure_interleaved(fns, timers, steps=steps, batch=cfg.batch, warmup=0,
                             repeats=run.repeats)
    cell_gemm = 2.0 * n_gemm**3 / ms.pop().median / 1e9 if matmul is not None else None
    for c, m in zip(ready, ms, strict=True):
        m.warmup = 1
        run.rows.append({**_row(cfg, backend, c.name, m, c.info),
                         "cell_gemm_gflops": cell_gemm})
    run.say(f"[bench] {backend:5} {cfg.name:<12} B={cfg.batch:<5} steps={steps:<5} "
            + "  ".join(f"{c.name} {m.samples_per_s:,.0f}/s"
                        for c, m in zip(ready, ms, strict=True)))


def _remeasure_ceiling(run: _Run, backend: str, n: int) -> None:
    """Measure the GEMM ceiling once more and keep the higher median of the two, noting both:
    on a shared machine either measurement may have met a busy neighbour."""
    try:
        again = C.backend_gemm(backend, n, repeats=run.repeats, seed=run.seed)
    except Exception:  # the first measurement stands
        return
    first = run.gemm[backend]
    both = [first["gflops"], again["gflops"]]
    run.gemm[backend] = {**(again if both[1] > both[0] else first), "measured_gflops": both}
    run.say(f"[bench] {backend} float32 GEMM {n} again: {both[1]:.1f} GFLOP/s "
            f"(ceiling {max(both):.1f})")


def per_configured_batch(m: Measurement, batch: int) -> dict[str, Any]:
    """A per-sample row's figures for its configuration's ``batch``, where the loop ran
    mini-batches of ``m.batch`` samples (a whole configured batch would take minutes).

    The samples/s stand as measured: the loop's cost is per sample, but for one update per
    mini-batch (about one sample's worth of memory traffic, so very small mini-batches read
    a little slow). The ms/step are those of a configured batch at the measured rates, so
    that every contender's row of a configuration means the same step; the mini-batch timed
    and its own ms/step are kept beside them."""
    slowest, fastest = m.samples_per_s_range
    return {"minibatch_used": m.batch, "ms_per_minibatch": m.ms_per_step,
            "ms_per_step": 1e3 * batch / m.samples_per_s,
            "ms_per_step_min": 1e3 * batch / fastest, "ms_per_step_max": 1e3 * batch / slowest}


def _per_sample_rows(run: _Run) -> None:
    """The article-style loop for each selected (CPU) configuration, on about ``target_s``
    of samples in mini-batches of at most the configuration's batch."""
    for cfg in run.configs:
        if cfg.gpu_only:
            continue
        n = C.per_sample_count(cfg, run.target_s)
        batch = min(cfg.batch, n)
        steps = max(1, n // batch)
        data = C.SyntheticData(cfg.layers[0], cfg.layers[-1], steps * batch, run.seed)
        try:
            params = C.make_network(cfg, "numpy", run.seed).get_params()
            c = C.make_per_sample(cfg, batch, data, params)
            m = measure(partial(c.run, steps), steps=steps, batch=batch, timer=c.timer,
                        warmup=1, repeats=run.repeats)
        except Exception as exc:
            run.rows.append(_error_row(cfg, "numpy", "per-sample", exc))
            continue
        run.rows.append({**_row(cfg, "numpy", "per-sample", m, c.info),
                         **per_configured_batch(m, cfg.batch)})
        run.say(f"[bench] numpy {cfg.name:<12} per-sample loop ({steps} x {batch} samples): "
                f"{m.samples_per_s:,.0f}/s")
