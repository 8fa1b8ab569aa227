"""``gpunn train``: train a network on a dataset, print its progress, write its files."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..train import Callback, EarlyStopping
from .models import describe, load_model
from .output import check_output_path, say, write_text
from .parsing import (
    UsageError,
    add_backend_flags,
    fraction,
    non_negative_float,
    non_negative_int,
    parse_hidden,
    parse_label_column,
    positive_float,
    positive_int,
)
from .plot import require_matplotlib, write_plot
from .train_settings import (
    TRAIN_DEFAULTS,
    build_optimizer,
    check_schedule_flags,
    given_flags,
    resolve_settings,
)

EPILOG = """\
defaults:
  A plain 'gpunn train' trains a 784-100-10 network (relu, softmax output, cross-entropy,
  He initialisation) by SGD with learning rate 0.1 and mini-batches of 10 for 30 epochs on the
  5,000-image MNIST subset (3,500 train, 500 validation, 1,000 test images); on a 2-core CPU
  it takes a few seconds and reaches about 0.94 test accuracy. The article's network is
  '--hidden 30 --activation sigmoid --output sigmoid --loss mse --lr 3.0'.

data (--data):
  mnist-subset, digits, iris, wine, breast_cancer   bundled datasets (no download)
  mnist:DIR                   the four MNIST IDX files in DIR (gzip'd or not)
  FILE.npz                    arrays X (samples) and y (integer labels)
  FILE.csv                    numeric columns and a label column ('label', else the last)
  Features are min-max scaled with the training part; the scaler is stored in the model file.

resuming:
  With --save, the model file is rewritten (atomically) after every epoch, together with the
  optimizer state, the epoch and the settings. '--resume FILE' continues that run: --epochs N
  trains N more epochs (by default the rest of the planned ones), on the same data split, with
  the same batch order and schedule, so 2 + 2 resumed epochs give the weights of 4 straight.

examples:
  gpunn train --data digits --hidden 64 --epochs 20 --save digits.npz --metrics m.json
  gpunn train --optimizer adam --lr 0.001 --batch-size 32 --early-stopping 3 --plot curve.png
  gpunn train --hidden 30 --activation sigmoid --output sigmoid --loss mse --lr 3.0
  gpunn train --schedule cosine --epochs 20 --save run.npz      # interrupted? then:
  gpunn train --resume run.npz --save run.npz
  gpunn train --data mnist:~/mnist --hidden 256,128 --backend cupy --batch-size 256
  mpiexec -n 2 gpunn train --distributed mpi --batch-size 128
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``gpunn train``; the defaults are left to :func:`resolve_settings`."""
    from ..backend import HIDDEN_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS
    from ..network import INITS
    from ..optim import OPTIMIZERS, SCHEDULES

    d = TRAIN_DEFAULTS
    data = p.add_argument_group("data")
    data.add_argument("--data", metavar="SPEC",
                      help=f"dataset name, mnist:DIR, FILE.npz or FILE.csv [{d['data']}]")
    data.add_argument("--label-column", metavar="COLUMN",
                      help="CSV label column, by name or index [label, else the last]")
    data.add_argument("--val-fraction", type=fraction, metavar="F",
                      help=f"share of the samples held out for validation [{d['val_fraction']}]")
    data.add_argument("--test-fraction", type=fraction, metavar="F",
                      help=f"share of the samples held out for the test [{d['test_fraction']}]")
    model = p.add_argument_group("network (input and output sizes come from the data)")
    model.add_argument("--hidden", type=parse_hidden, metavar="SIZES",
                       help="hidden layer sizes, comma-separated, or 'none' [100]")
    model.add_argument("--activation", choices=HIDDEN_ACTIVATIONS,
                       help=f"hidden layers' activation [{d['activation']}]")
    model.add_argument("--output", choices=OUTPUT_ACTIVATIONS,
                       help=f"output layer's activation [{d['output']}]")
    model.add_argument("--loss", choices=LOSSES, help=f"cost function [{d['loss']}]")
    model.add_argument("--init", choices=INITS,
                       help="initial weights [he with relu, else normal: the article's]")
    model.add_argument("--dtype", choices=("float32", "float64"), help="[float32]")
    train = p.add_argument_group("training")
    train.add_argument("--optimizer", choices=OPTIMIZERS, help=f"[{d['optimizer']}]")
    train.add_argument("--lr", type=positive_float, metavar="ETA",
                       help="learning rate η [0.1; adam 0.001]")
    train.add_argument("--momentum", type=non_negative_float, metavar="MU",
                       help=f"momentum μ of momentum and nesterov, in [0, 1) [{d['momentum']}]")
    train.add_argument("--weight-decay", type=non_negative_float, metavar="LAMBDA",
                       help="weight decay λ (decoupled for adam) [0]")
    train.add_argument("--schedule", choices=SCHEDULES,
                       help="learning-rate schedule per epoch [constant]")
    train.add_argument("--step-size", type=positive_int, metavar="N",
                       help=f"step schedule: epochs between drops [{d['step_size']}]")
    train.add_argument("--gamma", type=positive_float,
                       help=f"step schedule: factor of each drop [{d['gamma']}]")
    train.add_argument("--schedule-epochs", type=positive_int, metavar="N",
                       help="cosine schedule: length of the plan in epochs [--epochs]")
    train.add_argument("--epochs", type=positive_int, metavar="N",
                       help=f"epochs to train (with --resume: more epochs) [{d['epochs']}]")
    train.add_argument("--batch-size", type=positive_int, metavar="M",
                       help=f"mini-batch size [{d['batch_size']}]")
    train.add_argument("--early-stopping", type=positive_int, metavar="PATIENCE",
                       help="stop when the validation loss has not improved for PATIENCE "
                       "epochs, and keep the best epoch's weights")
    train.add_argument("--seed", type=non_negative_int,
                       help="seed of the weights, the data split and the batch order [0]")
    run = p.add_argument_group("running and output")
    add_backend_flags(run)
    run.add_argument("--distributed", choices=("mpi", "nccl", "auto"),
                     help="data-parallel over the ranks of mpiexec (rank 0 prints and writes)")
    run.add_argument("--save", metavar="PATH", help="write the model file here (every epoch)")
    run.add_argument("--resume", metavar="PATH", help="continue training the model in PATH")
    run.add_argument("--metrics", metavar="PATH", help="write per-epoch metrics as JSON")
    run.add_argument("--plot", metavar="PATH", help="write the training curve as PNG")
    run.add_argument("--quiet", action="store_true", help="print only the test result")
    p.set_defaults(run=run_train)


class _EpochEnd(Callback):
    """After each epoch: print the progress line, keep the record, checkpoint the model. (The
    final save happens in run_train, after early stopping restored its weights.)"""

    def __init__(self, report: Callable[[dict[str, Any]], None],
                 save: Callable[[int], None] | None) -> None:
        self.report, self.save = report, save

    def on_epoch_end(self, net: Any, record: dict[str, Any]) -> bool:
        self.report(record)
        if self.save is not None:
            self.save(int(record["epoch"]))
        return False


def _finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics record for JSON: non-finite floats (a 0-second epoch's rate) become null."""
    return {
        k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()
    }


def run_train(args: argparse.Namespace) -> int:
    """``gpunn train``: check the output paths, connect the ranks, train; the exit status."""
    import gpunn

    save_path = check_output_path("--save", args.save)
    metrics_path = check_output_path("--metrics", args.metrics)
    plot_path = check_output_path("--plot", args.plot)
    if plot_path is not None:
        require_matplotlib()
    if args.resume is not None and not Path(args.resume).expanduser().is_file():
        raise UsageError(f"--resume {args.resume}: the model file does not exist")

    comm = None
    if args.distributed:
        try:
            from .. import distributed
        except ImportError as exc:
            raise UsageError(
                f"--distributed is not available in this gpunn installation ({exc})"
            ) from None
        comm = distributed.connect(args.distributed, gpunn.get_backend(args.backend))
    try:
        return _train(args, comm, save_path, metrics_path, plot_path)
    finally:
        close = getattr(comm, "close", None)
        if callable(close):
            close()


def _train(args: argparse.Namespace, comm: Any, save_path: Path | None,
           metrics_path: Path | None, plot_path: Path | None) -> int:
    import gpunn

    from ..data import load_dataset

    root = comm is None or comm.rank == 0
    quiet = args.quiet or not root

    model = None
    if args.resume is not None:
        model = load_model(args.resume, args.backend)
    ckpt = model.checkpoint if model is not None else None
    s = resolve_settings(args, ckpt, model)
    given = given_flags(args)
    check_schedule_flags(s, given)
    opt = build_optimizer(s, given, ckpt)
    if ckpt is not None and s.optimizer_config is not None:
        opt.load_state_arrays(model.backend, ckpt.optimizer_state, model.dtype)
    if args.early_stopping and s.val_fraction == 0:
        raise UsageError(
            "--early-stopping watches the validation loss: it needs --val-fraction above 0"
        )

    dataset = load_dataset(
        s.data, val_fraction=s.val_fraction, test_fraction=s.test_fraction, seed=s.split_seed,
        dtype=s.dtype, label_column=parse_label_column(s.label_column),
    )
    if model is None:
        net = gpunn.Network(
            [dataset.n_features, *s.hidden, dataset.n_classes], activation=s.activation,
            output=s.output, loss=s.loss, init=s.init, backend=args.backend, dtype=s.dtype,
            seed=s.seed,
        )
    else:
        net = model
        if dataset.n_features != net.sizes[0] or dataset.n_classes > net.sizes[-1]:
            raise UsageError(
                f"{dataset.name} has {dataset.n_features} features and {dataset.n_classes} "
                f"classes; the model in {args.resume} takes {net.sizes[0]} features and "
                f"{net.sizes[-1]} outputs"
            )

    from ..optim import make_schedule

    schedule = make_schedule(s.schedule, s.schedule_epochs, s.step_size, s.gamma)
    last_epoch = s.initial_epoch + s.epochs
    metadata = {
        "dataset": dataset.name,
        "data": str(s.data),
        "label_column": s.label_column,
        "val_fraction": s.val_fraction,
        "test_fraction": s.test_fraction,
        "split_seed": s.split_seed,
        "n_classes": dataset.n_classes,
        "train": {
            "batch_size": s.batch_size,
            "schedule": schedule.config(),
            "planned_epochs": last_epoch,
            "history": s.history,
        },
    }
    scaler_arrays = dataset.scaler.to_arrays() if dataset.scaler is not None else {}
    history_records: list[dict[str, Any]] = metadata["train"]["history"]

    def save(epoch: int) -> None:
        net.optimizer = opt  # fit sets it only at the end; the checkpoint needs it now
        net.save(save_path, epoch=epoch, arrays=scaler_arrays, metadata=metadata,
                 fit_seed=s.seed)

    show_bar = not quiet and sys.stderr.isatty()

    def report(record: dict[str, Any]) -> None:
        history_records.append(_finite_or_none(record))
        if quiet:
            return
        line = f"epoch {int(record['epoch']):>{len(str(last_epoch))}}/{last_epoch}  " \
               f"loss {record['loss']:.4f}"
        if "val_loss" in record:
            line += f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}"
        line += f"  {record['samples_per_second']:,.0f} samples/s"
        if show_bar:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stdout)
        else:
            say(line)

    if not quiet:
        what = "resuming" if model is not None else "training"
        say(
            f"{what} {describe(net)} on {dataset.name} ({len(dataset.y_train)} train, "
            f"{len(dataset.y_val)} validation, {len(dataset.y_test)} test samples): "
            f"{opt.name} lr {opt.base_lr:g}, batch {s.batch_size}, epochs "
            f"{s.initial_epoch + 1}-{last_epoch}, {net.backend.name} {net.dtype.name}"
            + (f", {comm.size} ranks" if comm is not None and comm.size > 1 else "")
        )
    callbacks: list[Callback | Any] = [_EpochEnd(report, save if save_path and root else None)]
    if args.early_stopping:
        callbacks.append(EarlyStopping(patience=args.early_stopping))
    validation = (dataset.X_val, dataset.y_val) if len(dataset.y_val) else None
    try:
        history = net.fit(
            dataset.X_train, dataset.y_train, epochs=s.epochs, batch_size=s.batch_size,
            optimizer=opt, validation_data=validation, seed=s.seed, progress=show_bar,
            callbacks=callbacks, schedule=schedule, initial_epoch=s.initial_epoch,
            total_epochs=s.schedule_epochs, comm=comm,
        )
    except KeyboardInterrupt:
        if save_path is not None and root and history_records:
            raise KeyboardInterrupt(
                f"interrupted; the model after epoch {int(history_records[-1]['epoch'])} is in "
                f"{save_path}: continue with 'gpunn train --resume {save_path}'"
            ) from None
        raise
    epochs_done = s.initial_epoch + len(history)
    stopped = len(history) < s.epochs
    if stopped:  # early stopping ended the run: a plain --resume has nothing left to do
        metadata["train"]["planned_epochs"] = epochs_done
        metadata["train"]["stopped_early"] = True

    test = None
    if len(dataset.y_test):
        test = net.evaluate(dataset.X_test, dataset.y_test)
    if root:
        if save_path is not None:
            save(epochs_done)
        if metrics_path is not None:
            payload = {
                "gpunn_version": gpunn.__version__,
                "dataset": dataset.name,
                "network": net.config(),
                "optimizer": opt.config(),
                "batch_size": s.batch_size,
                "schedule": schedule.config(),
                "backend": net.backend.name,
                "epochs": history_records,
                "test": None if test is None else {**test, "samples": len(dataset.y_test)},
            }
            write_text(metrics_path, json.dumps(payload, indent=2) + "\n")
        if plot_path is not None:
            write_plot(plot_path, history_records, title=f"{describe(net)} on {dataset.name}")
        if stopped and not quiet:
            say(f"early stopping after epoch {epochs_done}: the validation loss stopped "
                "improving; keeping the best epoch's weights")
        if test is not None:
            say(f"test accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}  "
                f"({len(dataset.y_test)} held-out samples)")
        else:
            say("no test part (--test-fraction 0): nothing held out to report")
        for flag, path in (("model", save_path), ("metrics", metrics_path), ("plot", plot_path)):
            if path is not None and not quiet:
                say(f"{flag} written to {path}")
    return 0
