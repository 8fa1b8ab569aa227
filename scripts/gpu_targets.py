"""gpunn's GPU speed goals, read off one ``gpunn bench`` JSON file.

    python scripts/gpu_targets.py RESULTS.json

Each goal is a figure the bench measured in one run on one GPU: gpunn's training throughput
against PyTorch eager's on the same device, configuration and batch size (``ratio_to_torch``),
and on wide-b8192 the share of the float32 GEMM rate timed in turn with it (``pct_gemm``).
Prints one line per goal: the figure, the goal, and whether the run meets it. Exits 0 when
every goal was measured and met, 1 when one was missed, 2 when one could not be read (no GPU
rows, PyTorch absent, a cell skipped or failed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    config: str
    field: str  # "ratio_to_torch" or "pct_gemm" of gpunn's row on the GPU
    minimum: float

    def describe(self) -> str:
        if self.field == "ratio_to_torch":
            return f"{self.config}: gpunn / PyTorch eager >= {self.minimum:g}x"
        return f"{self.config}: >= {self.minimum:g}% of the float32 GEMM rate"


GOALS = (
    Goal("mlp-b32", "ratio_to_torch", 3.0),
    Goal("mlp-b128", "ratio_to_torch", 1.5),
    Goal("mlp-b1024", "ratio_to_torch", 1.0),
    Goal("mlp-b8192", "ratio_to_torch", 1.0),
    Goal("wide-b8192", "pct_gemm", 85.0),
)


def check(results: dict) -> list[tuple[Goal, float | None, str]]:
    """(goal, measured figure or None, verdict) for every goal: "met", "missed" or why the
    figure is missing."""
    rows = {r.get("config"): r for r in results.get("rows", [])
            if r.get("backend") == "cupy" and r.get("contender") == "gpunn"}
    out: list[tuple[Goal, float | None, str]] = []
    for goal in GOALS:
        row = rows.get(goal.config)
        if row is None:
            out.append((goal, None, "not measured (no gpunn row on the GPU)"))
        elif row.get("status") != "ok":
            out.append((goal, None, f"{row.get('status')}: {row.get('reason', '')}"))
        elif row.get(goal.field) is None:
            why = "no PyTorch eager row" if goal.field == "ratio_to_torch" else "no GEMM rate"
            out.append((goal, None, f"not measured ({why})"))
        else:
            value = float(row[goal.field])
            out.append((goal, value, "met" if value >= goal.minimum else "missed"))
    return out


def ceiling_ratios(results: dict) -> str:
    """The TF32 and float16 GEMM rates as multiples of the float32 rate, e.g. "TF32 6.1x,
    float16 12.3x": how much faster a GEMM-bound step could run with ``--tf32`` or with
    float16 storage (the figure that decides whether such storage would pay)."""
    gemm = results.get("gemm") or {}
    base = (gemm.get("cupy") or {}).get("gflops")
    if not base or (gemm.get("cupy") or {}).get("dtype") != "float32":
        return ""  # no plain float32 ceiling (none measured, or measured under --tf32)
    parts = [f"{label} {gemm[name]['gflops'] / base:.1f}x"
             for name, label in (("cupy-tf32", "TF32"), ("cupy-float16", "float16"))
             if (gemm.get(name) or {}).get("gflops")]
    return ", ".join(parts)


def amp_speedups(results: dict) -> str:
    """PyTorch's mixed precision (float16) against its float32 eager step, per configuration
    on the GPU, e.g. "mlp-b8192 1.3x, wide-b8192 2.1x": what float16 storage buys end to end
    in a mature framework."""
    parts = []
    for name in [c["name"] for c in results.get("configs", [])]:
        rows = [r for r in results.get("rows", []) if r.get("backend") == "cupy"
                and r.get("config") == name and r.get("contender") == "torch-amp"
                and r.get("status") == "ok" and r.get("ratio_to_torch")]
        parts += [f"{name} {r['ratio_to_torch']:.2f}x" for r in rows]
    return ", ".join(parts)


def replayed_shares(results: dict) -> str:
    """The share of gpunn's timed GPU steps that ran as recorded CUDA graphs, per goal
    configuration, e.g. "mlp-b32 100%, wide-b8192 100%": far below 100% means the figures
    above were measured on steps launched kernel by kernel (the bench log says why)."""
    goals = {goal.config for goal in GOALS}
    parts = []
    for r in results.get("rows", []):
        info = r.get("info") or {}
        total = info.get("replayed_steps", 0) + info.get("eager_steps", 0)
        if (r.get("backend") == "cupy" and r.get("contender") == "gpunn"
                and r.get("config") in goals and total):
            parts.append(f"{r['config']} {100 * info['replayed_steps'] / total:.0f}%")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="a JSON file written by gpunn bench --json")
    path = parser.parse_args(argv).results
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 2
    machine = results.get("machine") or {}
    gpu = (machine.get("gpu") or {}).get("name") or "no GPU recorded"
    tf32 = " (TF32 products)" if (results.get("settings") or {}).get("tf32") else ""
    print(f"GPU speed goals, {gpu}{tf32}:")
    verdicts = check(results)
    for goal, value, verdict in verdicts:
        shown = "-" if value is None else f"{value:.2f}"
        print(f"  {goal.describe():<50} {shown:>8}  {verdict}")
    replayed = replayed_shares(results)
    if replayed:
        print("  gpunn's timed steps replayed as CUDA graphs: " + replayed)
    ceilings = ceiling_ratios(results)
    if ceilings:
        print("  GEMM ceilings on the GPU, relative to float32: " + ceilings)
    speedups = amp_speedups(results)
    if speedups:
        print("  PyTorch float16 mixed precision / its float32 eager step: " + speedups)
    if any(value is None for _, value, _ in verdicts):
        return 2
    return 0 if all(verdict == "met" for _, _, verdict in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
