"""The model files the commands load, and what they store besides the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_model(path: str, backend: str) -> Any:
    """``gpunn.load``, after checking that the file exists (before any backend is set up)."""
    import gpunn

    from ..io import check_model_path

    target = Path(path).expanduser()
    check_model_path(target)
    return gpunn.load(target, backend=backend)


def stored_scaler(net: Any) -> Any:
    """The min-max scaler stored in a model file, or None if it has none."""
    from ..data import MinMaxScaler

    arrays = net.checkpoint.arrays if net.checkpoint is not None else {}
    if "scaler_min" not in arrays:
        return None
    return MinMaxScaler.from_arrays(arrays)


def stored_metadata(net: Any) -> dict[str, Any]:
    """The metadata ``gpunn train`` stored in a model file (data, split, run); {} if none."""
    meta = net.checkpoint.meta.get("metadata") if net.checkpoint is not None else None
    return meta if isinstance(meta, dict) else {}


def describe(net: Any) -> str:
    """``784-100-10 (relu/softmax/cross_entropy)``: the sizes and functions of a network."""
    arch = "-".join(str(n) for n in net.sizes)
    return f"{arch} ({net.activation}/{net.output}/{net.loss_name})"
