"""``gpunn predict``: a model's predictions for input samples, written as CSV."""

from __future__ import annotations

import argparse
import csv
import io

from ..errors import DataError
from .models import load_model, stored_scaler
from .output import say, write_text
from .parsing import add_backend_flags, check_output_files

EPILOG = """\
INPUT is a .csv (or .csv.gz) file of feature columns without labels, read as 'gpunn train'
reads CSV data: comma, semicolon or tab separated, numbers optionally quoted, a header row
optional (a first row of column names), blank lines and lines starting with # skipped.
Or an .npz file with an array X (or a single array), or an .npy array: samples in rows,
images are flattened. Features are scaled with the scaler stored in the model file. The output
CSV has one row per sample: the predicted class and the network's output per class
(probabilities with a softmax output).

examples:
  gpunn predict model.npz samples.csv --out predictions.csv
  gpunn predict model.npz images.npz --out predictions.csv --backend numpy
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gpunn predict``."""
    p.add_argument("model", metavar="MODEL", help="a model file written by 'gpunn train --save'")
    p.add_argument("input", metavar="INPUT", help="samples: .csv, .npz (array X) or .npy")
    p.add_argument("--out", required=True, metavar="PATH", help="the CSV file to write")
    add_backend_flags(p)
    p.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """``gpunn predict``: write the predicted class and outputs per sample; the exit status."""
    import numpy

    from ..data import load_features
    from ..validation import check_values

    paths = check_output_files({"--out": args.out}, {"MODEL": args.model, "INPUT": args.input})
    out = paths["--out"]
    X = load_features(args.input)
    net = load_model(args.model, args.backend)
    n_inputs = net.sizes[0]
    if X.shape[1] != n_inputs:
        extra = " (drop the label column)" if X.shape[1] == n_inputs + 1 else ""
        raise DataError(
            f"{args.input} has {X.shape[1]} features per sample but the model takes "
            f"{n_inputs}{extra}"
        )
    scaler = stored_scaler(net)
    if scaler is not None:  # in the model's precision at least
        X = scaler.transform(X.astype(numpy.result_type(X.dtype, net.dtype), copy=False))
    shown = f"{args.input} after the model's scaling" if scaler is not None else args.input
    check_values(shown, X, net.dtype, error=DataError)
    outputs = net.predict(X)
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
