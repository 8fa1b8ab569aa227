"""``gpunn evaluate``: a model's loss and accuracy on data, split as in its training run."""

from __future__ import annotations

import argparse

from .models import describe, load_model, stored_scaler
from .output import say
from .parsing import UsageError, add_backend_flags, parse_label_column
from .train_settings import TRAIN_DEFAULTS, StoredRun

EPILOG = """\
The model's stored min-max scaler scales the data as in training. By default the data and its
split are those the model was trained on (the test part is the held-out one).

examples:
  gpunn evaluate model.npz                       # the held-out test part of its training data
  gpunn evaluate model.npz --data digits --split all
  gpunn evaluate model.npz --data test.npz --split all
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gpunn evaluate``."""
    p.add_argument("model", metavar="MODEL", help="a model file written by 'gpunn train --save'")
    p.add_argument("--data", metavar="SPEC", help="dataset spec [the model's training data]")
    p.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                   help="which part of the data [test]; 'all' uses every sample")
    p.add_argument("--label-column", metavar="COLUMN", help="CSV label column")
    add_backend_flags(p)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """``gpunn evaluate``: print the loss and accuracy; the exit status."""
    from ..data import load_dataset

    net = load_model(args.model, args.backend)
    run = StoredRun(net, f"the model in {args.model}")
    spec = args.data or run.get("data")
    if spec is None:
        raise UsageError(f"{args.model} does not name its training data: pass --data SPEC")
    same_data = args.data is None or args.data == run.meta.get("data")
    label_column = args.label_column if args.label_column is not None else (
        run.get("label_column") if same_data else None)
    split = {"val_fraction": TRAIN_DEFAULTS["val_fraction"],
             "test_fraction": TRAIN_DEFAULTS["test_fraction"], "seed": 0}
    if same_data:  # the parts of the training run, as they were
        split = {"val_fraction": run.get("val_fraction", split["val_fraction"]),
                 "test_fraction": run.get("test_fraction", split["test_fraction"]),
                 "seed": run.get("split_seed", net.seed)}
    scaler = stored_scaler(net)
    dataset = load_dataset(
        spec, **split, scale=scaler is None, dtype=net.dtype.name,
        label_column=parse_label_column(label_column),
    )
    import numpy

    parts = {
        "train": (dataset.X_train, dataset.y_train),
        "val": (dataset.X_val, dataset.y_val),
        "test": (dataset.X_test, dataset.y_test),
    }
    if args.split == "all":
        X = numpy.concatenate([p[0] for p in parts.values()])
        y = numpy.concatenate([p[1] for p in parts.values()])
    else:
        X, y = parts[args.split]
    if len(y) == 0:
        raise UsageError(f"the {args.split} part of {dataset.name} is empty; try --split all")
    if scaler is not None:
        X = scaler.transform(X).astype(net.dtype, copy=False)
    result = net.evaluate(X, y)
    say(f"model     {args.model}: {describe(net)}")
    say(f"data      {dataset.name}, {args.split} part, {len(y)} samples")
    say(f"loss      {result['loss']:.6f}")
    say(f"accuracy  {result['accuracy']:.4f}  ({round(result['accuracy'] * len(y))}/{len(y)})")
    return 0
