"""scripts/gpu_targets.py: the GPU speed goals read off a bench JSON file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "gpu_targets.py"
_spec = importlib.util.spec_from_file_location("gpu_targets", _PATH)
gpu_targets = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gpu_targets  # its dataclass looks its module up there
_spec.loader.exec_module(gpu_targets)


def results(ratios: dict, pct_gemm: float | None = 90.0, **wide) -> dict:
    rows = [{"backend": "cupy", "contender": "gpunn", "config": name, "status": "ok",
             "ratio_to_torch": ratio, "pct_gemm": 50.0} for name, ratio in ratios.items()]
    rows.append({"backend": "cupy", "contender": "gpunn", "config": "wide-b8192",
                 "status": "ok", "ratio_to_torch": 1.0, "pct_gemm": pct_gemm, **wide})
    # rows of other contenders and backends must not count
    rows.append({"backend": "numpy", "contender": "gpunn", "config": "mlp-b32", "status": "ok",
                 "ratio_to_torch": 0.1, "pct_gemm": 1.0})
    rows.append({"backend": "cupy", "contender": "torch-eager", "config": "mlp-b32",
                 "status": "ok", "ratio_to_torch": 1.0, "pct_gemm": 1.0})
    gemm = {"cupy": {"dtype": "float32", "gflops": 50e3},
            "cupy-tf32": {"dtype": "float32-tf32", "gflops": 300e3},
            "cupy-float16": {"dtype": "float16", "gflops": 600e3}}
    rows.append({"backend": "cupy", "contender": "torch-amp", "config": "wide-b8192",
                 "status": "ok", "ratio_to_torch": 2.5, "pct_gemm": 1.0})
    configs = [{"name": name} for name in [*ratios, "wide-b8192"]]
    return {"machine": {"gpu": {"name": "NVIDIA H200"}}, "settings": {"tf32": False},
            "gemm": gemm, "rows": rows, "configs": configs}


MET = {"mlp-b32": 3.2, "mlp-b128": 1.5, "mlp-b1024": 1.1, "mlp-b8192": 1.0}


def run(tmp_path, data, capsys) -> tuple[int, str]:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    code = gpu_targets.main([str(path)])
    return code, capsys.readouterr().out


def test_every_goal_met(tmp_path, capsys):
    code, out = run(tmp_path, results(MET), capsys)
    assert code == 0
    assert "NVIDIA H200" in out and out.count(" met") == 5
    assert "3.20" in out and "90.00" in out
    assert "relative to float32: TF32 6.0x, float16 12.0x" in out
    assert "float16 mixed precision / its float32 eager step: wide-b8192 2.50x" in out


def test_no_ceiling_ratios_without_a_plain_float32_rate():
    data = results(MET)
    data["gemm"]["cupy"]["dtype"] = "float32-tf32"  # measured under --tf32
    assert gpu_targets.ceiling_ratios(data) == ""
    assert gpu_targets.ceiling_ratios({"gemm": {"cupy": {"error": "no GPU"}}}) == ""


@pytest.mark.parametrize("change", [{"mlp-b32": 2.9}, {"mlp-b8192": 0.99}])
def test_a_ratio_below_its_goal_is_missed(tmp_path, capsys, change):
    code, out = run(tmp_path, results({**MET, **change}), capsys)
    assert code == 1 and out.count("missed") == 1


def test_the_gemm_share_is_a_goal_of_wide_b8192(tmp_path, capsys):
    code, out = run(tmp_path, results(MET, pct_gemm=84.9), capsys)
    assert code == 1
    (missed,) = [line for line in out.splitlines() if "missed" in line]
    assert missed.lstrip().startswith("wide-b8192")


def test_what_was_not_measured_is_said_and_fails(tmp_path, capsys):
    data = results({**MET, "mlp-b128": None}, status="skipped",
                   reason="time budget of 485 s used up")
    data["rows"] = [r for r in data["rows"]
                    if not (r["config"] == "mlp-b32" and r["backend"] == "cupy"
                            and r["contender"] == "gpunn")]
    code, out = run(tmp_path, data, capsys)
    assert code == 2
    assert "no gpunn row on the GPU" in out  # mlp-b32
    assert "no PyTorch eager row" in out  # mlp-b128
    assert "skipped: time budget of 485 s used up" in out  # wide-b8192


def test_an_unreadable_file_is_reported(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    assert gpu_targets.main([str(tmp_path / "bad.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_the_share_of_steps_replayed_as_graphs_is_printed(tmp_path, capsys):
    data = results(MET)
    for r in data["rows"]:
        if r["config"] == "mlp-b32" and r["backend"] == "cupy":
            r["info"] = {"replayed_steps": 99, "eager_steps": 1}
        if r["config"] == "wide-b8192" and r["backend"] == "cupy":
            r["info"] = {"replayed_steps": 0, "eager_steps": 40}
    code, out = run(tmp_path, data, capsys)
    assert code == 0
    assert "replayed as CUDA graphs: mlp-b32 99%, wide-b8192 0%" in out
