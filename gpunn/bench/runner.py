"""``run_bench``: every contender on every backend, configuration and batch size, in one run.

For each backend: the float32 GEMM ceiling first; then, per model and batch size, all
contenders are built on the same data and initial weights, warmed up, and timed on the same
number of steps, their repeats interleaved. The per-sample baseline (slow) gets a small fixed
sample count at each configuration's own batch size.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from ..backend.cupy_ops import tf32_in_use
from . import contenders as C
from .configs import BenchConfig, get_configs
from .sysinfo import available_backends, machine_info
from .timing import HostTimer, Measurement, measure_interleaved

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
        raise ValueError(f"batch sizes must be positive integers, got {vals}")
    return sorted(set(vals))


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


def _data_for(cache: dict, cfg: BenchConfig, device: str, seed: int,
              max_batch: int) -> C.SyntheticData:
    n_in, n_out = cfg.layers[0], cfg.layers[-1]
    n = max(max_batch, DATA_BYTES[device] // (4 * n_in))
    key = (n_in, n_out, device)
    if key not in cache:
        cache[key] = C.SyntheticData(n_in, n_out, n, seed)
    return cache[key]


def _calibrate(c: C.Contender, cfg: BenchConfig, target_s: float, n_data: int,
               ceiling_gflops: float | None, min_steps: int = 1) -> int:
    """Steps per repeat so that the first contender's repeat lasts about ``target_s``, and
    at least ``min_steps``: a repeat is one short epoch, and its once-per-epoch work (the
    divergence check, reading the loss back) is not part of a step's throughput."""
    if ceiling_gflops:
        est = cfg.flops_per_sample * cfg.batch / (ceiling_gflops * 1e9)
        if est * 3 > target_s:  # a step is long: no calibration run needed
            steps = max(min_steps, math.floor(target_s / est))
            return C.canonical_steps(steps, cfg.batch, n_data)
    probe = C.canonical_steps(4, cfg.batch, n_data)
    c.run(probe)  # first call: allocation, graph capture...
    timer = HostTimer(getattr(c.timer, "sync", None))
    timer.start()
    c.run(probe)
    per_step = max(timer.stop() / probe, 1e-7)
    steps = int(min(MAX_STEPS, max(min_steps, round(target_s / per_step))))
    return C.canonical_steps(steps, cfg.batch, n_data)


def _build(name: str, make: Callable[[], C.Contender], skipped: dict, backend: str
           ) -> C.Contender | None:
    try:
        return make()
    except C.Skip as exc:
        skipped.setdefault((name, backend), str(exc))
    return None


def run_bench(configs: Iterable[str] | str | Sequence[BenchConfig] | None = None,
              backends: Iterable[str] | str | None = None,
              batch_sizes: Iterable[int] | str | None = None,
              peers: bool = True, quick: bool = False, repeats: int | None = None,
              seed: int = 0, log: Callable[[str], Any] | None = _log_default,
              target_s: float | None = None, time_budget: float | None = None,
              checkpoint: Callable[[dict], Any] | None = None,
              gemm_n: int | None = None) -> dict:
    """Measure training throughput; returns ``{"machine", "settings", "gemm", "rows", ...}``.

    configs: names (or families, or BenchConfig objects), default all of DESIGN.md section 5.
    backends: "numpy", "cupy" (default: every available one). batch_sizes: explicit list
    (default: a sweep per device plus each configuration's own batch). peers: also time
    PyTorch and the per-sample loop. quick: shorter sweep, shorter repeats, fewer of them.
    time_budget: seconds after which remaining cells are skipped (recorded as such).
    checkpoint: called with the results so far after every cell (e.g. to save them).
    gemm_n: size of the square GEMM measuring the ceiling (default 2048 CPU, 8192 GPU).
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
    have = available_backends()
    wanted = list(backends) if backends is not None else have
    sizes = parse_int_list(batch_sizes)  # type: ignore[arg-type]
    repeats = int(repeats) if repeats else (3 if quick else 5)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    target = float(target_s) if target_s else TARGET_S[bool(quick)]
    min_steps = 1 if quick else MIN_STEPS

    machine = machine_info()
    tf32 = "cupy" in wanted and tf32_in_use()
    results: dict[str, Any] = {
        "schema": SCHEMA, "machine": machine,
        "settings": {"configs": [c.name for c in cfgs], "backends": wanted,
                     "batch_sizes": sizes, "peers": peers, "quick": quick,
                     "repeats": repeats, "seed": seed, "target_s_per_repeat": target,
                     "dtype": "float32", "warmup": "one untimed repeat per contender",
                     # float32 products on the GPU's tensor cores (--tf32): gpunn's, and
                     # then the PyTorch peers' too, so that the ratios compare like with like
                     "tf32": tf32,
                     "flops_per_sample": "2*sum(W) fwd + 2*sum(W) dW + 2*sum(W[1:]) dX"},
        "configs": [c.as_dict() for c in cfgs],
        "gemm": {}, "rows": [], "skipped": [],
    }
    skipped: dict[tuple[str, str], str] = {}
    rows: list[dict] = results["rows"]
    gemm: dict[str, dict] = results["gemm"]

    for backend in wanted:
        if backend not in ("numpy", "cupy"):
            raise ValueError(f"unknown backend {backend!r}; choose numpy or cupy")
        if backend not in have:
            from .sysinfo import _gpu_info

            skipped[("gpunn", backend)] = _gpu_info().get("reason", "not available here")
            say(f"[bench] skipping backend {backend}: {skipped[('gpunn', backend)]}")
            continue
        device = C.device_of(backend)
        n_gemm = int(gemm_n) if gemm_n else C.gemm_size(backend)
        try:
            gemm[backend] = C.backend_gemm(backend, n_gemm, repeats=repeats, seed=seed)
            say(f"[bench] {backend} float32 GEMM {n_gemm}: {gemm[backend]['gflops']:.1f} GFLOP/s")
        except Exception as exc:  # report, keep going
            gemm[backend] = {"error": f"{type(exc).__name__}: {exc}"}
        if backend == "cupy":  # the tensor-core rates that --tf32 and float16 storage could reach
            for name, options in (("cupy-tf32", {"tf32": True}),
                                  ("cupy-float16", {"dtype": "float16"})):
                try:
                    gemm[name] = C.backend_gemm(backend, n_gemm, repeats=repeats, seed=seed,
                                                **options)
                    say(f"[bench] {name} GEMM {n_gemm}: {gemm[name]['gflops']:.1f} GFLOP/s")
                except Exception as exc:  # report, keep going
                    gemm[name] = {"error": f"{type(exc).__name__}: {exc}"}
        if peers:
            try:
                gemm[f"torch-{device}"] = C.torch_gemm(backend, n_gemm, repeats=repeats,
                                                       tf32=tf32)
                say(f"[bench] torch {device} float32 GEMM {n_gemm}: "
                    f"{gemm[f'torch-{device}']['gflops']:.1f} GFLOP/s")
            except C.Skip as exc:
                skipped[("torch", backend)] = str(exc)
            except Exception as exc:  # report, keep going: the peers are timed on their own
                gemm[f"torch-{device}"] = {"error": f"{type(exc).__name__}: {exc}"}
        ceiling = gemm[backend].get("gflops")
        # the same product again, timed in turn with the contenders of every cell, so that
        # "% of the GEMM ceiling" compares two rates measured in the same moments
        matmul, matmul_timer = C.backend_matmul(backend, n_gemm, seed) if ceiling else (None, None)

        cells = plan_cells(cfgs, backend, sizes, quick)
        if not cells:
            continue
        data_cache: dict = {}
        max_batch = max(c.batch for c in cells)
        for cfg in cells:
            if time_budget is not None and time.perf_counter() - t_start > time_budget:
                rows.append(_row(cfg, backend, "gpunn", None, status="skipped",
                                 reason=f"time budget of {time_budget:g} s used up"))
                continue
            data = _data_for(data_cache, cfg, device, seed, max_batch)
            try:
                net = C.make_network(cfg, backend, seed)
                params = net.get_params()
            except Exception as exc:
                rows.append(_row(cfg, backend, "gpunn", None, status="error",
                                 reason=f"{type(exc).__name__}: {exc}"))
                continue
            built: list[C.Contender] = []
            g = _build("gpunn", partial(C.make_gpunn, cfg, backend, cfg.batch, data, seed,
                                        net=net), skipped, backend)
            if g is not None:
                built.append(g)
            if peers:
                for name, make in (("torch-eager", C.make_torch_eager),
                                   ("torch-cuda-graph", C.make_torch_cuda_graph),
                                   ("torch-amp", C.make_torch_amp)):
                    if name != "torch-eager" and backend != "cupy":
                        continue
                    try:
                        c = _build(name, partial(make, cfg, backend, cfg.batch, data, params,
                                                 tf32=tf32), skipped, backend)
                    except Exception as exc:
                        rows.append(_row(cfg, backend, name, None, status="error",
                                         reason=f"{type(exc).__name__}: {exc}"))
                        continue
                    if c is not None:
                        built.append(c)
            if not built:
                continue
            try:
                steps = _calibrate(built[0], cfg, target, len(data), ceiling, min_steps)
            except Exception as exc:
                rows.append(_row(cfg, backend, built[0].name, None, status="error",
                                 reason=f"{type(exc).__name__}: {exc}"))
                built = built[1:]
                if not built:
                    continue
                steps = _calibrate(built[0], cfg, target, len(data), ceiling, min_steps)
            ready = []
            for c in built:  # warm-up: one untimed repeat each
                try:
                    c.run(steps)
                    ready.append(c)
                except Exception as exc:
                    rows.append(_row(cfg, backend, c.name, None, status="error",
                                     reason=f"{type(exc).__name__}: {exc}"))
            if not ready:
                continue
            fns, timers = [partial(c.run, steps) for c in ready], [c.timer for c in ready]
            if matmul is not None:
                fns.append(matmul)
                timers.append(matmul_timer)
            ms = measure_interleaved(fns, timers, steps=steps, batch=cfg.batch, warmup=0,
                                     repeats=repeats)
            cell_gemm = 2.0 * n_gemm**3 / ms.pop().median / 1e9 if matmul is not None else None
            for c, m in zip(ready, ms, strict=True):
                m.warmup = 1
                rows.append(_row(cfg, backend, c.name, m, c.info))
                rows[-1]["cell_gemm_gflops"] = cell_gemm
            say(f"[bench] {backend:5} {cfg.name:<12} B={cfg.batch:<5} steps={steps:<5} " +
                "  ".join(f"{c.name} {m.samples_per_s:,.0f}/s" for c, m in zip(ready, ms,
                                                                              strict=True)))
            if checkpoint is not None:
                _finish_rows(rows, gemm)
                checkpoint(results)
        if ceiling:  # again after the sweep: the higher median is what the hardware can do
            _remeasure_ceiling(gemm, backend, n_gemm, repeats, seed, say)
        over = time_budget is not None and time.perf_counter() - t_start > time_budget
        if peers and backend == "numpy" and not over:
            _per_sample_rows(cfgs, rows, target, repeats, seed, say)
    results["skipped"] = [{"contender": n, "backend": b, "reason": r}
                          for (n, b), r in skipped.items()]
    _finish_rows(rows, gemm)
    results["elapsed_s"] = time.perf_counter() - t_start
    return results


def _remeasure_ceiling(gemm: dict, backend: str, n: int, repeats: int, seed: int,
                       say: Any) -> None:
    """Measure the GEMM ceiling once more and keep the higher median of the two, noting both:
    on a shared machine either measurement may have met a busy neighbour."""
    try:
        again = C.backend_gemm(backend, n, repeats=repeats, seed=seed)
    except Exception:  # the first measurement stands
        return
    first = gemm[backend]
    both = [first["gflops"], again["gflops"]]
    gemm[backend] = {**(again if both[1] > both[0] else first), "measured_gflops": both}
    say(f"[bench] {backend} float32 GEMM {n} again: {both[1]:.1f} GFLOP/s "
        f"(ceiling {max(both):.1f})")


def _per_sample_rows(cfgs: Sequence[BenchConfig], rows: list[dict], target: float,
                     repeats: int, seed: int, say: Callable[[str], Any]) -> None:
    """The article-style loop at each selected (CPU) configuration's own batch size."""
    for cfg in cfgs:
        if cfg.gpu_only:
            continue
        n = C.per_sample_count(cfg, target)
        batch = min(cfg.batch, n)
        steps = max(1, n // batch)
        data = C.SyntheticData(cfg.layers[0], cfg.layers[-1], steps * batch, seed)
        try:
            params = C.make_network(cfg, "numpy", seed).get_params()
            c = C.make_per_sample(cfg, batch, data, params)
            c.run(steps)
            (m,) = measure_interleaved([partial(c.run, steps)], [c.timer], steps=steps,
                                       batch=batch, warmup=0, repeats=repeats)
            m.warmup = 1
        except Exception as exc:
            rows.append(_row(cfg, "numpy", "per-sample", None, status="error",
                             reason=f"{type(exc).__name__}: {exc}"))
            continue
        row = _row(cfg, "numpy", "per-sample", m, c.info)
        row["batch"] = cfg.batch
        row["minibatch_used"] = batch
        rows.append(row)
        say(f"[bench] numpy {cfg.name:<12} per-sample loop ({steps * batch} samples): "
            f"{m.samples_per_s:,.0f}/s")
