"""gpunn.bench: FLOP counts, timing statistics, the per-sample baseline, reports, run_bench."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json

import numpy as np
import pytest

from gpunn import Network
from gpunn.backend import get_backend
from gpunn.bench import configs as cfgmod
from gpunn.bench import persample, report, runner, sysinfo
from gpunn.bench.configs import CONFIGS, BenchConfig, flops_per_sample, get_configs
from gpunn.bench.timing import HostTimer, Measurement, measure, measure_interleaved
from gpunn.errors import InputError


# ------------------------------------------------------------------ configurations and FLOPs
def test_flops_by_hand() -> None:
    # seed 784-30-10: W = 23520 + 300; fwd 2W, dW 2W, dX only for the 300 of layer 2
    assert flops_per_sample((784, 30, 10)) == 2 * 23820 + 2 * 23820 + 2 * 300 == 95880
    # mlp 784-256-256-10: W = 200704 + 65536 + 2560 = 268800
    assert flops_per_sample((784, 256, 256, 10)) == 4 * 268800 + 2 * (65536 + 2560) == 1211392
    # wide 2048^3 x 3 + 20480
    w = 3 * 2048 * 2048 + 2048 * 10
    assert flops_per_sample((2048, 2048, 2048, 2048, 10)) == 4 * w + 2 * (w - 2048 * 2048)
    assert flops_per_sample((2, 3)) == 4 * 6  # one layer: no input gradient at all


def test_configs_match_design() -> None:
    assert list(CONFIGS) == ["seed", "mlp-b32", "mlp-b128", "mlp-b1024", "wide-b1024",
                             "mlp-b8192", "wide-b8192"]
    seed = CONFIGS["seed"]
    assert (seed.layers, seed.activation, seed.output, seed.loss, seed.lr, seed.batch) == (
        (784, 30, 10), "sigmoid", "sigmoid", "mse", 3.0, 10)
    for name in ("mlp-b32", "mlp-b128", "mlp-b1024", "mlp-b8192"):
        c = CONFIGS[name]
        assert c.layers == (784, 256, 256, 10) and c.loss == "cross_entropy"
        assert (c.activation, c.output, c.lr) == ("relu", "softmax", 0.1)
        assert c.batch == int(name.split("-b")[1])
    assert CONFIGS["wide-b8192"].layers == (2048, 2048, 2048, 2048, 10)
    assert {n for n, c in CONFIGS.items() if c.gpu_only} == {"mlp-b8192", "wide-b8192"}
    assert CONFIGS["mlp-b32"].flops_per_sample == 1211392


def test_get_configs_and_with_batch() -> None:
    assert [c.name for c in get_configs("seed,wide")] == ["seed", "wide-b1024", "wide-b8192"]
    with pytest.raises(ValueError, match="unknown benchmark configuration 'nope'"):
        get_configs(["nope"])
    assert CONFIGS["mlp-b32"].with_batch(128) is CONFIGS["mlp-b128"]
    other = CONFIGS["mlp-b32"].with_batch(64)
    assert other.name == "mlp-b64" and other.batch == 64 and not other.gpu_only


def test_plan_cells() -> None:
    cpu = runner.plan_cells(get_configs(), "numpy")
    assert all(not c.gpu_only for c in cpu)
    assert {c.batch for c in cpu if c.family == "seed"} == {10, 16, 64, 256, 1024}
    assert {c.batch for c in cpu if c.family == "mlp"} == {16, 32, 64, 128, 256, 1024}
    gpu = runner.plan_cells(get_configs("mlp"), "cupy")
    # the configurations first, so that a time budget skips the sweep before them
    own = [32, 128, 1024, 8192]
    assert [c.batch for c in gpu] == own + sorted({2**k for k in range(14)} - set(own))
    assert [c.name for c in gpu[:4]] == ["mlp-b32", "mlp-b128", "mlp-b1024", "mlp-b8192"]
    assert runner.plan_cells(get_configs("mlp-b8192"), "numpy") == []
    assert [c.batch for c in runner.plan_cells(get_configs("seed"), "numpy", [3])] == [3]
    assert runner.parse_int_list("1-8, 3") == [1, 2, 3, 4, 8]


# ------------------------------------------------------------------ timing
class FakeClock:
    """Each start/stop pair advances by the next duration; sync calls are counted."""

    def __init__(self, durations: list[float]) -> None:
        self.t = 0.0
        self.durations = list(durations)
        self.reads = 0
        self.syncs = 0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:
            self.t += self.durations.pop(0)
        return self.t

    def sync(self) -> None:
        self.syncs += 1


def test_measure_median_and_spread_on_fake_clock() -> None:
    clock = FakeClock([0.30, 0.10, 0.20, 0.50, 0.20])
    calls = []
    m = measure(lambda: calls.append(1), steps=10, batch=4,
                timer=HostTimer(clock.sync, clock), warmup=2, repeats=5)
    assert len(calls) == 7  # 2 warm-up calls are not timed
    assert clock.syncs == 10  # synchronised before every clock read
    assert m.times == pytest.approx([0.3, 0.1, 0.2, 0.5, 0.2])
    assert m.median == pytest.approx(0.2)
    assert (m.min, m.max) == pytest.approx((0.1, 0.5))
    assert m.quartiles == pytest.approx((0.2, 0.3))
    assert m.spread == pytest.approx((0.5 - 0.1) / 0.2)
    assert m.samples_per_s == pytest.approx(40 / 0.2)
    assert m.samples_per_s_range == pytest.approx((40 / 0.5, 40 / 0.1))
    assert m.ms_per_step == pytest.approx(20.0)
    d = m.as_dict()
    assert d["samples_per_s"] == pytest.approx(200.0) and d["repeats"] == 5


def test_measure_interleaved_round_robin() -> None:
    order: list[str] = []
    clock = FakeClock([1, 2, 3, 4])
    timer = HostTimer(clock.sync, clock)
    ms = measure_interleaved([lambda: order.append("a"), lambda: order.append("b")],
                             [timer, timer], steps=1, batch=1, warmup=1, repeats=2)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert ms[0].times == [1, 3] and ms[1].times == [2, 4]
    with pytest.raises(ValueError):
        measure(lambda: None, steps=1, batch=1, repeats=0)


def test_measure_interleaved_refuses_no_repeats_and_unpaired_timers() -> None:
    timer = HostTimer()
    with pytest.raises(InputError, match="repeats must be at least 1"):
        measure_interleaved([lambda: None], [timer], steps=1, batch=1, repeats=0)
    with pytest.raises(InputError, match="one timer per contender"):
        measure_interleaved([lambda: None, lambda: None], [timer], steps=1, batch=1)


def test_measurement_single_repeat() -> None:
    m = Measurement([0.5], steps=2, batch=3)
    assert m.quartiles == (0.5, 0.5) and m.spread == 0.0 and m.samples_per_s == 12.0


# ------------------------------------------------------------------ per-sample baseline
def _batched_gradient(params, X, Y, activation, output, loss):
    """Reference: the batched backprop of docs/design.md, in float64 NumPy."""
    acts = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "relu": lambda z: np.maximum(z, 0),
            "tanh": np.tanh, "identity": lambda z: z}
    prime = {"sigmoid": lambda z, a: a * (1 - a), "relu": lambda z, a: (z > 0) * 1.0,
             "tanh": lambda z, a: 1 - a * a, "identity": lambda z, a: np.ones_like(z)}
    A, As, Zs = X, [X], []
    for i, (W, b) in enumerate(params):
        Z = A @ W.T + b
        last = i == len(params) - 1
        if last and output == "softmax":
            E = np.exp(Z - Z.max(axis=1, keepdims=True))
            A = E / E.sum(axis=1, keepdims=True)
        else:
            A = acts[output if last else activation](Z)
        Zs.append(Z)
        As.append(A)
    n = len(X)
    if loss == "cross_entropy":
        delta = (A - Y) / n
    else:
        delta = 2 * (A - Y) / n * prime[output](Zs[-1], A)
    grads = [None] * len(params)
    for layer in range(len(params) - 1, -1, -1):
        grads[layer] = (delta.T @ As[layer], delta.sum(axis=0))
        if layer:
            delta = (delta @ params[layer][0]) * prime[activation](Zs[layer - 1], As[layer])
    return grads


@pytest.mark.parametrize(("activation", "output", "loss"), [
    ("sigmoid", "sigmoid", "mse"), ("relu", "softmax", "cross_entropy"),
    ("tanh", "identity", "mse")])
def test_per_sample_gradient_equals_batched(activation, output, loss) -> None:
    rng = np.random.default_rng(1)
    sizes = [5, 4, 3, 3]
    params = [(rng.normal(size=(o, i)), rng.normal(size=o))
              for i, o in itertools.pairwise(sizes)]
    X = rng.random((7, 5))
    Y = persample.one_hot(rng.integers(0, 3, 7), 3, np.float64)
    got = persample.minibatch_gradient(params, X, Y, activation, output, loss)
    want = _batched_gradient(params, X, Y, activation, output, loss)
    for (gw, gb), (ww, wb) in zip(got, want, strict=True):
        np.testing.assert_allclose(gw, ww, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gb, wb, rtol=1e-10, atol=1e-12)


def test_per_sample_matches_gpunn_gradients() -> None:
    net = Network([6, 5, 4], activation="sigmoid", output="sigmoid", loss="mse",
                        backend="numpy", dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    X, labels = rng.random((9, 6)), rng.integers(0, 4, 9)
    params = persample.copy_params(net.get_params(), np.float64)
    got = persample.minibatch_gradient(params, X, persample.one_hot(labels, 4, np.float64),
                                       "sigmoid", "sigmoid", "mse")
    for (gw, gb), (ww, wb) in zip(got, net.gradients(X, labels), strict=True):
        np.testing.assert_allclose(gw, ww, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(gb, wb, rtol=1e-8, atol=1e-12)


def test_per_sample_sgd_steps_update() -> None:
    rng = np.random.default_rng(2)
    params = [(rng.normal(size=(3, 4)), np.zeros(3))]
    X = rng.random((4, 4))
    Y = persample.one_hot(np.array([0, 1, 2, 0]), 3, np.float64)
    before = persample.copy_params(params, np.float64)
    g = persample.minibatch_gradient(before, X, Y, "sigmoid", "sigmoid", "mse")
    persample.sgd_steps(params, X, Y, 4, 0.5, "sigmoid", "sigmoid", "mse")
    np.testing.assert_allclose(params[0][0], before[0][0] - 0.5 * g[0][0])


def test_per_sample_rows_stand_for_the_configured_batch() -> None:
    """The loop timed 3-sample mini-batches of a configuration of batch 8: its samples/s are
    those measured, its ms/step those of 8 samples at that rate, and the table says so."""
    m = Measurement([0.5, 0.4, 0.6], steps=10, batch=3)  # 30 samples per repeat
    figures = runner.per_configured_batch(m, 8)
    assert figures["minibatch_used"] == 3
    assert figures["ms_per_minibatch"] == pytest.approx(m.ms_per_step) == pytest.approx(50.0)
    assert figures["ms_per_step"] == pytest.approx(1e3 * 8 / m.samples_per_s)
    assert figures["ms_per_step_min"] == pytest.approx(1e3 * 8 * 0.4 / 30)
    assert figures["ms_per_step_max"] == pytest.approx(1e3 * 8 * 0.6 / 30)
    row = {**runner._row(TINY, "numpy", "per-sample", m), **figures}
    assert row["batch"] == 8 and row["samples_per_s"] == pytest.approx(m.samples_per_s)
    table = report.format_table([row])
    assert "timed on mini-batches of fewer samples (tiny 3)" in table
    assert f"{row['ms_per_step']:.3f}" in table
    assert "mini-batches" not in report.format_table([{**row, "minibatch_used": 8}])


def test_the_per_sample_loop_runs_smaller_minibatches_than_a_big_configuration(monkeypatch):
    monkeypatch.setattr(runner.C, "per_sample_count", lambda cfg, target: 6)
    res = runner.run_bench(configs=[TINY], backends="numpy", batch_sizes=[8], quick=True,
                           peers=["per-sample"], repeats=1, log=None, target_s=0.005, gemm_n=32)
    (row,) = [r for r in res["rows"] if r["contender"] == "per-sample"]
    assert (row["status"], row["batch"], row["minibatch_used"], row["steps"]) == ("ok", 8, 6, 1)
    assert row["ms_per_step"] == pytest.approx(1e3 * 8 / row["samples_per_s"])
    assert row["ms_per_minibatch"] == pytest.approx(1e3 * 6 / row["samples_per_s"])


# ------------------------------------------------------------------ machine info and reports
def test_machine_info_never_raises_and_formats() -> None:
    info = sysinfo.machine_info()
    for key in ("cpu", "python", "versions", "blas", "gpu"):
        assert key in info
    assert info["versions"]["numpy"] == np.__version__
    assert "available" in info["gpu"]
    if not info["gpu"]["available"]:
        assert info["gpu"]["reason"]
    text = sysinfo.format_machine_info(info)
    assert "cpu" in text and "numpy" in text and "gpu" in text
    assert sysinfo.format_machine_info({})  # missing everything: still formats


def _fake_results() -> dict:
    def row(contender, batch, sps, family="mlp"):
        return {"backend": "numpy", "device": "cpu", "contender": contender,
                "config": f"{family}-b{batch}", "family": family, "batch": batch,
                "status": "ok", "steps": 10, "repeats": 3, "samples_per_s": sps,
                "samples_per_s_min": sps * 0.9, "samples_per_s_max": sps * 1.1,
                "ms_per_step": 1e3 * batch / sps, "ms_per_step_min": 1.0,
                "ms_per_step_max": 2.0, "spread": 0.2, "timer": "host", "times_s": [1.0],
                "gflops": sps * 1.2e-3}
    rows = [row("gpunn", 32, 50_000.0), row("torch-eager", 32, 40_000.0),
            row("gpunn", 128, 100_000.0), row("torch-eager", 128, 110_000.0),
            row("per-sample", 32, 3_000.0),
            {"backend": "numpy", "device": "cpu", "contender": "torch-eager",
             "config": "seed", "family": "seed", "batch": 10, "status": "error",
             "reason": "boom"}]
    results = {"machine": {"cpu": {"model": "test cpu"}}, "rows": rows,
               "gemm": {"numpy": {"n": 64, "gflops": 300.0, "gflops_min": 290.0,
                                  "gflops_max": 310.0}},
               "skipped": [{"contender": "gpunn", "backend": "cupy", "reason": "no GPU"}]}
    runner._finish_rows(rows, results["gemm"])
    return results


def test_finish_rows_ratios() -> None:
    rows = _fake_results()["rows"]
    assert rows[0]["ratio_to_torch"] == pytest.approx(1.25)
    assert rows[3]["ratio_to_torch"] == pytest.approx(1.0)
    assert rows[0]["pct_gemm"] == pytest.approx(100 * 60.0 / 300.0)
    assert rows[4]["ratio_to_torch"] == pytest.approx(3_000 / 40_000)  # per-sample vs torch
    assert "ratio_to_torch" not in rows[5]  # failed rows carry no numbers


def test_table_json_plot(tmp_path) -> None:
    results = _fake_results()
    table = report.format_table(results)
    assert "gpunn" in table and "50k" in table and "1.25" in table
    assert "error: boom" in table and "skipped gpunn on cupy: no GPU" in table
    assert "GEMM ceiling numpy" in table
    results["np_value"] = np.float32(1.5)
    path = report.write_json(results, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text())["np_value"] == 1.5
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left
    pytest.importorskip("matplotlib")
    png = report.plot(results, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no successful"):
        report.plot({"rows": []}, tmp_path / "empty.png")


def _fake_gpu_and_cpu_results() -> dict:
    results = _fake_results()
    results["configs"] = [{"name": "seed"}, {"name": "mlp-b32", "layers": [784, 256, 10]},
                          {"name": "mlp-b128"}]
    for contender, sps in (("gpunn", 900_000.0), ("torch-eager", 300_000.0),
                           ("torch-cuda-graph", 600_000.0)):
        results["rows"].append({**results["rows"][0], "backend": "cupy", "device": "gpu",
                                "contender": contender, "samples_per_s": sps,
                                "gflops": sps * 1.2e-3})
    results["gemm"]["cupy"] = {"n": 64, "gflops": 50_000.0, "gflops_min": 49_000.0,
                               "gflops_max": 51_000.0}
    runner._finish_rows(results["rows"], results["gemm"])
    return results


def test_markdown_tables_hold_the_configurations_per_backend(tmp_path) -> None:
    results = _fake_gpu_and_cpu_results()
    text = report.format_markdown(results)
    gpu, cpu = text.split("\n\n")
    assert gpu.splitlines() == [
        "| config | gpunn CuPy | PyTorch eager | PyTorch CUDA graphs "
        "| gpunn / PyTorch eager | gpunn / fastest PyTorch | GFLOP/s | % of CuPy GEMM |",
        "|---|---|---|---|---|---|---|---|",
        "| mlp-b32 784-256-10 | 900k/s | 300k/s | 600k/s | 3.00 | 1.50 | 1080.0 | 2.2 |"]
    assert cpu.splitlines()[2:] == [  # seed has no gpunn row: it is left out
        "| mlp-b32 784-256-10 | 50k/s | 40k/s | 3k/s | 1.25 | 60.0 | 20.0 |",
        "| mlp-b128 | 100k/s | 110k/s | - | 0.91 | 120.0 | 40.0 |"]
    path = report.write_markdown(results, tmp_path / "r.md")
    assert path.read_text() == text + "\n"
    assert report.format_markdown({"rows": [], "configs": []}) == ""


def test_bench_command_writes_json_and_markdown(tmp_path, monkeypatch, capsys) -> None:
    from gpunn import bench

    monkeypatch.setattr(bench, "run_bench", lambda **kwargs: _fake_gpu_and_cpu_results())
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--json", str(tmp_path / "r.json"),
                              "--markdown", str(tmp_path / "r.md")])
    assert bench.main(args) == 0
    assert json.loads((tmp_path / "r.json").read_text())["configs"][1]["name"] == "mlp-b32"
    assert "| mlp-b32 784-256-10 | 900k/s |" in (tmp_path / "r.md").read_text()
    assert "Markdown written to" in capsys.readouterr().out


def test_write_json_is_atomic_on_failure(tmp_path) -> None:
    target = tmp_path / "r.json"
    target.write_text('{"old": true}')
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match=r"[Cc]ircular"):
        report.write_json(circular, target)
    assert json.loads(target.read_text()) == {"old": True}  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # temp file removed
    report.write_json({"ok": 1}, target)
    assert json.loads(target.read_text()) == {"ok": 1}


def test_cli_hook_arguments() -> None:
    from gpunn import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--configs", "seed", "--backends", "numpy", "--batch-sizes",
                              "4,8", "--quick", "--json", "x.json", "--plot", "x.png",
                              "--no-peers", "--repeats", "2"])
    assert (args.configs, args.backends, args.batch_sizes) == ([CONFIGS["seed"]], ["numpy"], [4, 8])
    assert args.quick and not args.peers and args.repeats == 2
    assert (args.json_path, args.plot_path) == ("x.json", "x.png")
    with pytest.raises(SystemExit):
        parser.parse_args(["--configs", "nope"])


def test_cli_peers_flag_names_the_peers_to_time(capsys) -> None:
    from gpunn import bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert parser.parse_args([]).peers is True
    chosen = parser.parse_args(["--peers", "per-sample,torch-compile"]).peers
    assert chosen == ("torch-compile", "per-sample")  # in the order of runner.PEERS
    for bad in (["--peers", "nope"], ["--peers", ","], ["--peers", "per-sample", "--no-peers"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert "unknown peer 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------ run_bench end to end
TINY = BenchConfig("tiny", (16, 8, 4), "relu", "softmax", "cross_entropy", 0.1, 8,
                   init="he", family="tiny")
TINY_SEED = BenchConfig("tinyseed", (16, 6, 3), "sigmoid", "sigmoid", "mse", 3.0, 4,
                        family="tinyseed")


def test_run_bench_tiny(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(runner.DATA_BYTES, "cpu", 64 * 1024)
    saved = []
    res = runner.run_bench(configs=[TINY, TINY_SEED], backends="numpy", batch_sizes=[4, 8],
                           quick=True, repeats=2, log=None, target_s=0.005, gemm_n=128,
                           checkpoint=lambda r: saved.append(len(r["rows"])))
    assert res["schema"] == runner.SCHEMA and "cpu" in res["machine"]
    assert res["gemm"]["numpy"]["gflops"] > 0
    ok = [r for r in res["rows"] if r["status"] == "ok"]
    assert saved and not [r for r in res["rows"] if r["status"] == "error"]
    gp = [r for r in ok if r["contender"] == "gpunn"]
    assert sorted((r["config"], r["batch"]) for r in gp) == sorted([
        ("tiny-b4", 4), ("tiny", 8), ("tinyseed", 4), ("tinyseed-b8", 8)])
    for r in ok:
        assert r["samples_per_s"] > 0 and r["ms_per_step"] > 0 and r["repeats"] == 2
        assert r["samples_per_s_min"] <= r["samples_per_s"] <= r["samples_per_s_max"]
        cfg = TINY if r["family"] == "tiny" else TINY_SEED
        assert r["gflops"] == pytest.approx(r["samples_per_s"] * cfg.flops_per_sample / 1e9)
        assert r["pct_gemm"] is not None
    torch_rows = [r for r in ok if r["contender"] == "torch-eager"]
    if torch_rows:
        same = {(r["config"], r["batch"]): r for r in torch_rows}
        for r in gp:
            assert r["ratio_to_torch"] == pytest.approx(
                r["samples_per_s"] / same[(r["config"], r["batch"])]["samples_per_s"])
            assert r["steps"] == same[(r["config"], r["batch"])]["steps"]  # same work
    assert {r["config"] for r in ok if r["contender"] == "per-sample"} == {"tiny", "tinyseed"}
    assert "tiny-b4" in report.format_table(res)
    json.loads(report.write_json(res, tmp_path / "r.json").read_text())


def test_a_failing_torch_gemm_is_reported_and_the_bench_goes_on(monkeypatch) -> None:
    """PyTorch's GEMM raising (a precision setting it refuses, memory) is one entry's error,
    like the other ceilings', not the end of the run."""
    from gpunn.bench import contenders as C

    def failing_gemm(*args, **kwargs):
        raise RuntimeError("refused")

    monkeypatch.setattr(C, "torch_gemm", failing_gemm)
    monkeypatch.setitem(runner.DATA_BYTES, "cpu", 64 * 1024)
    res = runner.run_bench(configs=[TINY], backends="numpy", batch_sizes=[8], quick=True,
                           repeats=1, log=None, target_s=0.005, gemm_n=32)
    assert res["gemm"]["torch-cpu"] == {"error": "RuntimeError: refused"}
    assert [r["status"] for r in res["rows"] if r["contender"] == "gpunn"] == ["ok"]
    assert "RuntimeError: refused" in report.format_table(res)


def test_run_bench_rejects_bad_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        runner.run_bench(configs=[TINY], backends="tpu", log=None, peers=False)


def test_peers_selected_and_torch_compile_left_out_of_quick_runs() -> None:
    everyone = ("torch-eager", "torch-compile", "torch-cuda-graph", "torch-amp", "per-sample")
    assert runner.select_peers(True) == everyone == runner.PEERS
    assert "torch-compile" not in runner.select_peers(True, quick=True)
    assert runner.select_peers(False) == runner.select_peers(False, quick=True) == ()
    assert runner.select_peers("per-sample,torch-compile", quick=True) == (
        "torch-compile", "per-sample")
    with pytest.raises(InputError, match="unknown peer 'jax'"):
        runner.select_peers(["torch-eager", "jax"])


def test_torch_compile_runs_at_the_configurations_own_batch_only(monkeypatch) -> None:
    """Compiling is slow: the compiled peer is built for the selected configurations, not for
    the rest of the sweep, and only when asked for (by name) under --quick."""
    from gpunn.bench import contenders as C

    built = []

    def make(cfg, backend, batch, *args, **kwargs):
        built.append((cfg.name, batch))
        raise C.Skip("recorded")

    monkeypatch.setattr(C, "make_torch_compile", make)
    monkeypatch.setitem(runner.DATA_BYTES, "cpu", 64 * 1024)
    options = {"configs": [TINY], "backends": "numpy", "batch_sizes": [4, 8], "repeats": 1,
               "log": None, "target_s": 0.002, "gemm_n": 32}
    runner.run_bench(quick=True, **options)
    assert built == []
    res = runner.run_bench(quick=True, peers=["torch-compile"], **options)
    assert built == [("tiny", 8)]
    assert {"contender": "torch-compile", "backend": "numpy", "reason": "recorded"} in (
        res["skipped"])
    assert res["settings"]["peers"] == ["torch-compile"]


def test_numpy_backend_has_no_tf32_and_its_gemm_takes_the_option() -> None:
    """``tf32=True`` asks for TensorFloat-32 products, a GPU setting: on NumPy it changes
    nothing, and the GEMM is reported as plain float32."""
    from gpunn.bench import contenders as C

    numpy_ops = get_backend("numpy")
    with numpy_ops.tf32_scope(True):
        assert numpy_ops.tf32_in_use() is False
    gemm = C.backend_gemm("numpy", 32, repeats=1, tf32=True)
    assert gemm["dtype"] == "float32" and gemm["gflops"] > 0
    assert isinstance(C.backend_timer(numpy_ops), HostTimer)


def test_module_constants_consistent() -> None:
    assert cfgmod.CONFIGS["wide-b1024"].weights == 3 * 2048 * 2048 + 20480


@pytest.mark.parametrize("cfg", [TINY, TINY_SEED], ids=["softmax-ce", "sigmoid-mse"])
def test_torch_peer_does_the_same_math(cfg) -> None:
    torch = pytest.importorskip("torch")
    from gpunn.bench import contenders as C

    data = C.SyntheticData(cfg.layers[0], cfg.layers[-1], 64, seed=0)
    net = C.make_network(cfg, "numpy")
    start = net.get_params()
    C.make_gpunn(cfg, "numpy", 8, data, net=net).run(3)
    peer = C.make_torch_eager(cfg, "numpy", 8, data, start)
    peer.run(3)
    lins = [m for m in peer.model if isinstance(m, torch.nn.Linear)]
    for (W, b), lin in zip(net.get_params(), lins, strict=True):
        np.testing.assert_allclose(lin.weight.detach().numpy(), W, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(lin.bias.detach().numpy(), b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(start[0][0], net.get_params()[0][0])  # it did train


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch")  # torch.compile's own use
def test_compiled_peer_trains_as_the_eager_one() -> None:
    """torch.compile of the eager step, compiled while it is built (``compile_s`` reported,
    the weights put back after that first step): the same weights as PyTorch eager after the
    same steps. Skipped, with the reason, where torch.compile cannot run."""
    torch = pytest.importorskip("torch")
    from gpunn.bench import contenders as C

    data = C.SyntheticData(TINY.layers[0], TINY.layers[-1], 64, seed=0)
    start = C.make_network(TINY, "numpy").get_params()
    try:
        compiled = C.make_torch_compile(TINY, "numpy", 8, data, start)
    except C.Skip as exc:
        pytest.skip(str(exc))
    assert compiled.name == "torch-compile" and compiled.info["compile_s"] > 0
    lins = [m for m in compiled.model if isinstance(m, torch.nn.Linear)]
    np.testing.assert_array_equal(lins[0].weight.detach().numpy(), start[0][0])
    eager = C.make_torch_eager(TINY, "numpy", 8, data, start)
    for peer in (compiled, eager):
        peer.run(5)
    pairs = zip(compiled.model.parameters(), eager.model.parameters(), strict=True)
    for got, want in pairs:
        np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-5,
                                   atol=1e-6)
    assert not np.allclose(lins[0].weight.detach().numpy(), start[0][0])  # it did train


def test_compiled_peer_is_skipped_where_torch_compile_cannot_run(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    import shutil

    from gpunn.bench import contenders as C

    data = C.SyntheticData(TINY.layers[0], TINY.layers[-1], 16, seed=0)
    start = C.make_network(TINY, "numpy").get_params()

    def failing_compile(fn, **options):
        def compiled(*args):
            raise RuntimeError("backend 'inductor' failed\nwith a long story")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    with pytest.raises(C.Skip, match=r"torch.compile failed here: RuntimeError: backend "
                                     r"'inductor' failed$"):
        C.make_torch_compile(TINY, "numpy", 8, data, start)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(C.Skip, match="needs a C\\+\\+ compiler"):
        C.make_torch_compile(TINY, "numpy", 8, data, start)


def test_mixed_precision_peer_follows_pytorchs_recipe() -> None:
    """The AMP step (autocast, GradScaler, torch.optim.SGD), run here on the CPU in bfloat16:
    it trains the same network as gpunn's float32 step, to bfloat16's precision. The bench
    runs it on the GPU only, in float16."""
    torch = pytest.importorskip("torch")
    from gpunn.bench import contenders as C

    cfg = TINY
    data = C.SyntheticData(cfg.layers[0], cfg.layers[-1], 64, seed=0)
    net = C.make_network(cfg, "numpy")
    start = net.get_params()
    C.make_gpunn(cfg, "numpy", 8, data, net=net).run(4)
    model, loss_fn = C.torch_model(torch, cfg, start, "cpu")
    step = C.amp_step(torch, model, loss_fn, cfg.lr, "cpu", torch.bfloat16)
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.labels)
    for i in range(4):
        step(X[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8])
    lins = [m for m in model if isinstance(m, torch.nn.Linear)]
    for (W, _), (W0, _), lin in zip(net.get_params(), start, lins, strict=True):
        moved = lin.weight.detach().numpy() - W0
        np.testing.assert_allclose(moved, W - W0, atol=0.05 * np.abs(W - W0).max())
        # and in bfloat16 indeed: float32 products would agree to about 1e-6 of the step
        assert np.abs(moved - (W - W0)).max() > 1e-4 * np.abs(W - W0).max()
    with pytest.raises(C.Skip, match="GPU only"):
        C.make_torch_amp(cfg, "numpy", 8, data, start)


@pytest.mark.parametrize("enabled", [True, False])
def test_torch_tf32_sets_pytorchs_cuda_precision_and_puts_it_back(enabled) -> None:
    torch = pytest.importorskip("torch")
    from gpunn.bench import contenders as C

    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, name)
    with C.torch_tf32(enabled):
        if name == "fp32_precision":
            assert matmul.fp32_precision == ("tf32" if enabled else "ieee")
        else:
            assert matmul.allow_tf32 is enabled
    assert getattr(matmul, name) == before


@pytest.mark.parametrize("tf32", [True, False])
def test_the_eager_peer_and_the_torch_gemm_compute_in_the_precision_asked(monkeypatch, tf32):
    """Not only asked: every product of the eager peer's steps and of PyTorch's GEMM runs
    inside ``torch_tf32(tf32)`` (here on the CPU, where the setting changes nothing)."""
    torch = pytest.importorskip("torch")
    from gpunn.bench import contenders as C

    precision: list[bool | None] = [None]
    seen: list[bool | None] = []

    @contextlib.contextmanager
    def recording(enabled):
        precision.append(enabled)
        try:
            yield
        finally:
            precision.pop()

    def recorded(product):
        def run(*args, **kwargs):
            seen.append(precision[-1])
            return product(*args, **kwargs)
        return run

    monkeypatch.setattr(C, "torch_tf32", recording)
    monkeypatch.setattr(torch.nn.functional, "linear", recorded(torch.nn.functional.linear))
    monkeypatch.setattr(torch, "matmul", recorded(torch.matmul))
    data = C.SyntheticData(TINY.layers[0], TINY.layers[-1], 64, seed=0)
    start = C.make_network(TINY, "numpy").get_params()
    C.make_torch_eager(TINY, "numpy", 8, data, start, tf32=tf32).run(2)
    assert seen and set(seen) == {tf32}
    seen.clear()
    C.torch_gemm("numpy", 16, repeats=1, tf32=tf32)
    assert seen and set(seen) == {tf32}


def test_peers_get_gpunns_precision_under_tf32(simulated, monkeypatch) -> None:
    """Under ``gpunn bench --tf32`` the PyTorch peers and their GEMM are asked for TF32 too,
    and without it for full float32: every ratio compares the same arithmetic."""
    from gpunn.backend import get_backend
    from gpunn.bench import contenders as C

    asked: list[tuple[str, bool]] = []

    def peer(name):
        def make(*args, tf32=False, **kwargs):
            asked.append((name, tf32))
            raise C.Skip("recorded")
        return make

    monkeypatch.setattr(C, "make_torch_eager", peer("torch-eager"))
    monkeypatch.setattr(C, "make_torch_compile", peer("torch-compile"))
    monkeypatch.setattr(C, "make_torch_cuda_graph", peer("torch-cuda-graph"))
    monkeypatch.setattr(C, "make_torch_amp", peer("torch-amp"))
    monkeypatch.setattr(C, "torch_gemm", peer("torch-gemm"))
    options = {"configs": [TINY], "backends": ["cupy"], "batch_sizes": [8], "quick": True,
               "gemm_n": 32, "log": None}
    with get_backend("cupy").tf32_scope(True):
        on = runner.run_bench(**options)
    off = runner.run_bench(**options)
    names = ["torch-gemm", "torch-eager", "torch-cuda-graph", "torch-amp"]
    assert asked == [(n, True) for n in names] + [(n, False) for n in names]
    assert on["settings"]["tf32"] is True and off["settings"]["tf32"] is False


def test_gpunn_rows_on_the_gpu_say_how_their_steps_ran(simulated) -> None:
    """Each gpunn row on the GPU records how many of its last run's steps were replayed as
    recorded CUDA graphs: the figure that says whether the rate is the fast path's."""
    from gpunn.bench import contenders as C

    data = C.SyntheticData(TINY.layers[0], TINY.layers[-1], 64, seed=0)
    gpunn_gpu = C.make_gpunn(TINY, "cupy", 8, data)
    for _ in range(2):
        gpunn_gpu.run(16)
    info = gpunn_gpu.info
    assert info["replayed_steps"] + info["eager_steps"] == 16
    assert info["replayed_steps"] == 16  # warmed up and recorded in the first run
    cpu = C.make_gpunn(TINY, "numpy", 8, data)
    cpu.run(16)
    assert "replayed_steps" not in cpu.info
