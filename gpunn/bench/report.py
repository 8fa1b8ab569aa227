"""Results as a text table, a JSON file (written atomically) and a log-log plot."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, InputError
from ..files import atomic_write
from .peers import TORCH_PEERS

_ORDER = {"gpunn": 0, "torch-eager": 1, "torch-compile": 2, "torch-cuda-graph": 3,
          "torch-amp": 4, "per-sample": 5}


def _rows(results: dict | list) -> list[dict]:
    return list(results["rows"] if isinstance(results, dict) else results)


def _si(x: float | None) -> str:
    """3 significant digits with k/M suffixes: 51234 -> '51.2k'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _rate(x: float | None) -> str:
    """Samples per second: '51.2k/s', or '-' where not measured."""
    return "-" if x is None else f"{_si(x)}/s"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(results: dict | list) -> str:
    """One line per (backend, configuration, batch, contender), plus GEMM ceilings and skips.

    Columns: samples/s (median, with the slowest..fastest repeat), ms per step, spread
    ((max - min) / median of the repeats), GFLOP/s done, % of that backend's float32 GEMM
    rate, and the ratio to PyTorch eager on the same device, configuration and batch. A
    per-sample row that timed smaller mini-batches than its batch says so below the table.
    """
    lines: list[str] = []
    if isinstance(results, dict):
        for name, g in (results.get("gemm") or {}).items():
            if "gflops" in g:
                lines.append(f"GEMM ceiling {name:<12} {g.get('dtype', 'float32'):<12} "
                             f"n={g['n']:<5} {g['gflops']:8.1f} GFLOP/s (min "
                             f"{g['gflops_min']:.1f}, max {g['gflops_max']:.1f})")
            else:
                lines.append(f"GEMM ceiling {name:<12} {g.get('error', '?')}")
        if lines:
            lines.append("")
    header = (f"{'backend':<7} {'contender':<17} {'config':<12} {'batch':>6} "
              f"{'samples/s':>10} {'(min..max)':>16} {'ms/step':>9} {'spread':>7} "
              f"{'GFLOP/s':>8} {'%GEMM':>6} {'x torch':>8}")
    lines.append(header)
    lines.append("-" * len(header))
    rows = sorted(_rows(results), key=lambda r: (r.get("backend", ""), r.get("family", ""),
                                                 r.get("batch", 0), r.get("config", ""),
                                                 _ORDER.get(r.get("contender", ""), 9)))
    for r in rows:
        head = (f"{r.get('backend', ''):<7} {r.get('contender', ''):<17} "
                f"{r.get('config', ''):<12} {r.get('batch', ''):>6} ")
        if r.get("status") != "ok":
            lines.append(head + f"{r.get('status', '?')}: {r.get('reason', '')}")
            continue
        rng = f"({_si(r['samples_per_s_min'])}..{_si(r['samples_per_s_max'])})"
        lines.append(head + f"{_si(r['samples_per_s']):>10} {rng:>16} "
                     f"{_num(r['ms_per_step'], '.3f'):>9} {_num(100 * r['spread'], '.1f'):>6}% "
                     f"{_num(r.get('gflops'), '.1f'):>8} {_num(r.get('pct_gemm'), '.1f'):>6} "
                     f"{_num(r.get('ratio_to_torch'), '.2f'):>8}")
    lines.extend(_minibatch_notes(rows))
    if isinstance(results, dict):
        for s in results.get("skipped") or []:
            lines.append(f"skipped {s['contender']} on {s['backend']}: {s['reason']}")
    return "\n".join(lines)


def _minibatch_notes(rows: list[dict]) -> list[str]:
    """Where the per-sample loop timed mini-batches smaller than the row's batch: which, and
    what its ms/step then mean (see :func:`gpunn.bench.runner.per_configured_batch`)."""
    smaller = [f"{r['config']} {r['minibatch_used']}" for r in rows
               if r.get("status") == "ok" and r.get("minibatch_used", r["batch"]) < r["batch"]]
    if not smaller:
        return []
    return [f"per-sample: timed on mini-batches of fewer samples ({', '.join(smaller)}); its "
            "samples/s are those measured, its ms/step those of the batch shown at that rate"]


#: the peers' column headings in the Markdown tables, in their order
_PEER_HEADINGS = {"torch-eager": "PyTorch eager", "torch-compile": "PyTorch compiled",
                  "torch-cuda-graph": "PyTorch CUDA graphs", "torch-amp": "PyTorch AMP float16",
                  "per-sample": "per-sample loop"}


def format_markdown(results: dict) -> str:
    """A Markdown table per backend of the selected configurations at their own batch size
    (``docs/design.md``, "Benchmarks"): gpunn's samples/s and each peer's, gpunn / PyTorch
    eager, gpunn / the fastest PyTorch of the same precision (where more than eager ran),
    GFLOP/s and % of the GEMM rate timed in turn with them: the README's tables."""
    rows = [r for r in _rows(results) if r.get("status") == "ok"]
    configs = results.get("configs", [])
    tables: list[str] = []
    for backend, label in (("cupy", "CuPy"), ("numpy", "NumPy")):
        cells = {(r["config"], r["contender"]): r for r in rows if r["backend"] == backend}
        peers = [p for p in _PEER_HEADINGS if any(contender == p for _, contender in cells)]
        ratio = ["gpunn / PyTorch eager"] if "torch-eager" in peers else []
        torches = [p for p in peers if p in TORCH_PEERS and TORCH_PEERS[p].same_precision]
        if len(torches) > 1:
            ratio.append("gpunn / fastest PyTorch")
        headings = ["config", f"gpunn {label}", *map(_PEER_HEADINGS.get, peers),
                    *ratio, "GFLOP/s", f"% of {label} GEMM"]
        lines = ["| " + " | ".join(headings) + " |", "|---" * len(headings) + "|"]
        for cfg in configs:
            own = cells.get((cfg["name"], "gpunn"))
            if own is None:
                continue
            shape = "-".join(map(str, cfg["layers"])) if "layers" in cfg else ""
            rates = [_rate((cells.get((cfg["name"], p)) or {}).get("samples_per_s"))
                     for p in peers]
            ratios = [_num(own.get("ratio_to_torch"), ".2f")] if "torch-eager" in peers else []
            if len(torches) > 1:
                fastest = max((cells.get((cfg["name"], p)) or {}).get("samples_per_s") or 0.0
                              for p in torches)
                ratios.append(_num(own["samples_per_s"] / fastest if fastest else None, ".2f"))
            lines.append("| " + " | ".join([f"{cfg['name']} {shape}".strip(),
                                            _rate(own["samples_per_s"]), *rates, *ratios,
                                            _num(own.get("gflops"), ".1f"),
                                            _num(own.get("pct_gemm"), ".1f")]) + " |")
        if len(lines) > 2:
            tables.append("\n".join(lines))
    return "\n\n".join(tables)


def _default(o: Any) -> Any:
    """JSON for NumPy scalars and arrays, paths, tuples."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def _write_atomically(path: str | os.PathLike[str], write: Any) -> Path:
    """``write(binary file)`` to ``path`` through :func:`gpunn.files.atomic_write`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


def write_json(results: dict | list, path: str | os.PathLike[str]) -> Path:
    """Write ``results`` as JSON, atomically (temporary file, then rename)."""
    text = json.dumps(results, indent=1, default=_default, allow_nan=True) + "\n"
    return _write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_markdown(results: dict, path: str | os.PathLike[str]) -> Path:
    """Write :func:`format_markdown` of ``results`` to ``path``, atomically."""
    text = format_markdown(results) + "\n"
    return _write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def read_json(path: str | os.PathLike[str]) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def plot(results: dict | list, path: str | os.PathLike[str]) -> Path:
    """Log-log samples/s against batch size: one panel per model, one line per contender and
    backend (the per-sample loop as a single marker). Needs matplotlib (gpunn[plot])."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"plotting needs matplotlib ({exc}); install it with: pip install 'gpunn[plot]'"
        ) from None
    rows = [r for r in _rows(results) if r.get("status") == "ok"]
    if not rows:
        raise InputError("no successful measurements to plot")
    families = sorted({r.get("family") or r["config"] for r in rows},
                      key=lambda f: ("seed", "mlp", "wide").index(f)
                      if f in ("seed", "mlp", "wide") else 9)
    fig, axes = plt.subplots(1, len(families), figsize=(5.2 * len(families), 4.4), squeeze=False)
    markers = {"gpunn": "o", "torch-eager": "s", "torch-compile": "D", "torch-cuda-graph": "^",
               "torch-amp": "v", "per-sample": "x"}
    for ax, fam in zip(axes[0], families, strict=True):
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for r in rows:
            if (r.get("family") or r["config"]) == fam:
                series.setdefault((r["contender"], r["backend"]), []).append(
                    (r["batch"], r["samples_per_s"]))
        for (contender, backend), pts in sorted(series.items(),
                                                key=lambda kv: (kv[0][1], _ORDER.get(kv[0][0], 9))):
            pts.sort()
            xs, ys = zip(*pts, strict=True)
            style = "--" if backend == "numpy" else "-"
            ax.plot(xs, ys, style, marker=markers.get(contender, "."),
                    label=f"{contender} ({'CPU' if backend == 'numpy' else 'GPU'})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("training samples / s")
        ax.set_title(fam)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    title = "gpunn training throughput (float32, SGD)"
    if isinstance(results, dict):
        m = results.get("machine") or {}
        cpu = (m.get("cpu") or {}).get("model")
        gpu = (m.get("gpu") or {}).get("name")
        title += f" — {cpu}" + (f" / {gpu}" if gpu else "")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    image_format = Path(path).suffix.lstrip(".") or "png"
    try:
        return _write_atomically(
            path, lambda handle: fig.savefig(handle, format=image_format, dpi=110)
        )
    finally:
        plt.close(fig)
