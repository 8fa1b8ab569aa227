"""Training throughput of gpunn (and PyTorch eager) on the benchmark configurations of
``docs/design.md``.

Each case times full SGD steps on device-resident data; ``extra_info`` records samples/s and
GFLOP/s. ``pytest benchmarks/ --benchmark-only`` benchmarks; ``--benchmark-disable`` smoke-tests.
"""

from __future__ import annotations

import pytest

from gpunn.bench import contenders as C
from gpunn.bench.configs import CONFIGS, BenchConfig
from gpunn.bench.runner import calibrate

from .conftest import ROUND_S, ROUNDS, backend_param, shared_data


def _cases() -> list:
    out = []
    for cfg in CONFIGS.values():
        for backend in ("numpy", "cupy"):
            if cfg.gpu_only and backend == "numpy":
                continue
            p = backend_param(backend)
            out.append(pytest.param(cfg, backend, marks=p.marks, id=f"{cfg.name}-{backend}"))
    return out


def _steps(contender: C.Contender, cfg: BenchConfig, n: int, disabled: bool) -> int:
    """2 steps when only smoke-testing; else enough for a round of about ROUND_S seconds."""
    if disabled:
        return C.canonical_steps(2, cfg.batch, n)
    return calibrate(contender, cfg, ROUND_S, n)


def _bench(benchmark, contender: C.Contender, cfg: BenchConfig, data: C.SyntheticData) -> None:
    disabled = bool(getattr(benchmark, "disabled", False))
    steps = _steps(contender, cfg, len(data), disabled)
    timer = contender.timer

    def one_round() -> None:  # synchronised: the clock is read after the device is idle
        timer.start()
        contender.run(steps)
        timer.stop()

    benchmark.group = f"{cfg.name}"
    benchmark.extra_info.update({"config": cfg.name, "batch": cfg.batch, "steps": steps,
                                 "contender": contender.name, "backend": contender.backend,
                                 "flops_per_sample": cfg.flops_per_sample, **contender.info})
    if disabled:
        benchmark(one_round)
        return
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    median = benchmark.stats.stats.median
    sps = steps * cfg.batch / median
    benchmark.extra_info["samples_per_s"] = sps
    benchmark.extra_info["gflops"] = sps * cfg.flops_per_sample / 1e9


@pytest.mark.parametrize(("cfg", "backend"), _cases())
def test_gpunn_train_step(benchmark, data_cache, cfg: BenchConfig, backend: str) -> None:
    data = shared_data(data_cache, cfg, backend, bool(getattr(benchmark, "disabled", False)))
    contender = C.make_gpunn(cfg, backend, cfg.batch, data)
    _bench(benchmark, contender, cfg, data)


@pytest.mark.parametrize(("cfg", "backend"), _cases())
def test_torch_eager_train_step(benchmark, data_cache, cfg: BenchConfig, backend: str) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed (peer benchmark)")
    data = shared_data(data_cache, cfg, backend, bool(getattr(benchmark, "disabled", False)))
    params = C.make_network(cfg, "numpy").get_params()
    try:
        contender = C.make_torch_eager(cfg, backend, cfg.batch, data, params)
    except C.Skip as exc:
        pytest.skip(str(exc))
    _bench(benchmark, contender, cfg, data)
