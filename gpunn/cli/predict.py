"""``gpunn predict``: a model's predictions for input samples, written as CSV."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

from ..data import is_number
from ..errors import DataError
from .models import load_model, stored_scaler
from .output import check_output_path, one_line, say, write_text
from .parsing import add_backend_flags

EPILOG = """\
INPUT is an .npz file with an array X (samples in rows; images are flattened), an .npy array,
or a .csv file of feature columns without labels (a header row is optional). Features are
scaled with the scaler stored in the model file. The output CSV has one row per sample: the
predicted class and the network's output per class (probabilities with a softmax output).

examples:
  gpunn predict model.npz samples.csv --out predictions.csv
  gpunn predict model.npz images.npz --out predictions.csv --backend numpy
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gpunn predict``."""
    p.add_argument("model", metavar="MODEL", help="a model file written by 'gpunn train --save'")
    p.add_argument("input", metavar="INPUT", help="samples: .npz (array X), .npy or .csv")
    p.add_argument("--out", required=True, metavar="PATH", help="the CSV file to write")
    add_backend_flags(p)
    p.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """``gpunn predict``: write the predicted class and outputs per sample; the exit status."""
    out = check_output_path("--out", args.out)
    inputs = Path(args.input).expanduser()
    if not inputs.is_file():
        raise DataError(f"input file {args.input} does not exist")
    net = load_model(args.model, args.backend)
    X = read_inputs(inputs)
    if X.ndim != 2 or X.shape[1] != net.sizes[0]:
        got = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
        extra = " (drop the label column)" if X.ndim == 2 and X.shape[1] == net.sizes[0] + 1 else ""
        raise DataError(
            f"{args.input} has {got} features per sample but the model takes "
            f"{net.sizes[0]}{extra}"
        )
    scaler = stored_scaler(net)
    if scaler is not None:
        X = scaler.transform(X)
    outputs = net.predict(X.astype(net.dtype, copy=False))
    if outputs.shape[1] == 1:
        predicted = (outputs[:, 0] >= 0.5).astype(int)
        columns = ["output"]
    else:
        predicted = outputs.argmax(axis=1)
        columns = [f"p{k}" for k in range(outputs.shape[1])]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["prediction", *columns])
    for label, row in zip(predicted.tolist(), outputs.tolist(), strict=True):
        writer.writerow([label, *(f"{v:.6g}" for v in row)])
    write_text(out, text.getvalue())
    say(f"predictions for {len(predicted)} samples written to {args.out}")
    return 0


def read_inputs(path: Path) -> Any:
    """Samples from an existing .npz (array X, or its only array), .npy or .csv (numeric, no
    labels) file."""
    import numpy

    name = path.name.lower()
    if name.endswith((".npz", ".npy")):
        try:
            with numpy.load(path, allow_pickle=False) as loaded:
                if isinstance(loaded, numpy.lib.npyio.NpzFile):
                    keys = loaded.files
                    key = "X" if "X" in keys else (keys[0] if len(keys) == 1 else None)
                    if key is None:
                        raise DataError(
                            f"{path} has no array named X (it has {', '.join(keys) or 'none'})"
                        )
                    X = loaded[key]
                else:
                    X = numpy.asarray(loaded)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path} is not a readable NumPy file: {one_line(exc)}") from None
        if X.dtype.kind not in "biuf":
            raise DataError(f"{path}: X has dtype {X.dtype}; it must hold numbers")
        if X.ndim > 2:
            X = X.reshape(X.shape[0], -1)
        return X
    if name.endswith(".csv"):
        with path.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row and any(c.strip() for c in row)]
        if rows and not all(is_number(c) for c in rows[0]):
            rows = rows[1:]  # a header row
        if not rows:
            raise DataError(f"{path} holds no samples")
        width = len(rows[0])
        values = []
        for i, row in enumerate(rows, start=1):
            if len(row) != width:
                raise DataError(f"{path}: row {i} has {len(row)} columns, the first has {width}")
            try:
                values.append([float(c) for c in row])
            except ValueError:
                raise DataError(f"{path}: row {i} holds a value that is not a number") from None
        return numpy.asarray(values)
    raise DataError(f"input {path}: use an .npz (array X), .npy or .csv file")
