"""``gpunn train``: train a network on a dataset, print its progress, write its files."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from ..train import Callback, EarlyStopping
from .models import describe, load_model
from .output import say, write_text
from .parsing import (
    UsageError,
    add_backend_flags,
    check_output_files,
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
    MAX_STORED_EPOCHS,
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
  With --save, the model file is rewritten (atomically) after the first epoch, then at most
  about once a second, and after the last epoch, together with the optimizer state, the epoch
  and the settings. '--resume FILE' continues that run from the epoch it holds: --epochs N
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
    from ..validation import FLOAT_DTYPES

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
    model.add_argument("--dtype", choices=FLOAT_DTYPES,
                       help=f"floating-point type of the weights and data [{d['dtype']}]")
    train = p.add_argument_group("training")
    train.add_argument("--optimizer", choices=OPTIMIZERS,
                       help=f"update rule; sgd is the article's [{d['optimizer']}]")
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
    run.add_argument("--save", metavar="PATH",
                     help="write the model file here (during training and at the end)")
    run.add_argument("--resume", metavar="PATH", help="continue training the model in PATH")
    run.add_argument("--metrics", metavar="PATH", help="write per-epoch metrics as JSON")
    run.add_argument("--plot", metavar="PATH", help="write the training curve as PNG")
    run.add_argument("--quiet", action="store_true", help="print only the test result")
    p.set_defaults(run=run_train)


class _EpochEnd(Callback):
    """After each epoch: keep the record, print the progress line, checkpoint the model when
    due. (The final save happens in _train, after early stopping restored its weights.)"""

    def __init__(self, records: list[dict[str, Any]], last_epoch: int, quiet: bool,
                 show_bar: bool, writer: _ModelWriter | None) -> None:
        self.records, self.last_epoch = records, last_epoch
        self.quiet, self.show_bar, self.writer = quiet, show_bar, writer

    def on_epoch_end(self, net: Any, record: dict[str, Any]) -> bool:
        self.records.append(_finite_or_none(record))
        if not self.quiet:
            _print_progress(_progress_line(record, self.last_epoch), self.show_bar)
        epoch = int(record["epoch"])
        if self.writer is not None and epoch < self.last_epoch:  # the last: _train saves it
            self.writer.after_epoch(epoch)
        return False


def _finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics record for JSON: non-finite floats (a 0-second epoch's rate) become null."""
    return {
        k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()
    }


def _progress_line(record: dict[str, Any], last_epoch: int) -> str:
    """``epoch  3/30  loss 0.2143  val_loss 0.2301  val_acc 0.9320  81,234 samples/s``"""
    line = f"epoch {int(record['epoch']):>{len(str(last_epoch))}}/{last_epoch}  " \
           f"loss {record['loss']:.4f}"
    if "val_loss" in record:
        line += f"  val_loss {record['val_loss']:.4f}  val_acc {record['val_accuracy']:.4f}"
    return line + f"  {record['samples_per_second']:,.0f} samples/s"


def _print_progress(line: str, show_bar: bool) -> None:
    """Print a progress line; above tqdm's bar when one is shown."""
    if show_bar:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        say(line)


def run_train(args: argparse.Namespace) -> int:
    """``gpunn train``: check the files, connect the ranks, train; the exit status."""
    paths = _output_paths(args, {"--data": args.data})
    if paths["--plot"] is not None:
        require_matplotlib()
    if args.resume is not None and not Path(args.resume).expanduser().is_file():
        raise UsageError(f"--resume {args.resume}: the model file does not exist")
    comm = _connect(args.distributed, args.backend) if args.distributed else None
    try:
        return _train(args, comm, paths)
    finally:
        if comm is not None:
            comm.close()


def _output_paths(args: argparse.Namespace, data: dict[str, str | None]) -> dict[str, Any]:
    """The output files' paths, refused where unwritable, shared, or one of the inputs: the
    model resumed from (which --save may update) and ``data``, {description: data spec}."""
    return check_output_files(
        {"--save": args.save, "--metrics": args.metrics, "--plot": args.plot},
        inputs={**data, "--resume": args.resume},
        rewrites=[("--save", "--resume")],
    )


def _connect(engine: str, backend: str) -> Any:
    """The communicator of the ranks mpiexec started (--distributed); it chooses the backend
    named by ``backend`` once it has selected this rank's GPU."""
    from .. import distributed

    return distributed.connect(engine, backend)


def _train(args: argparse.Namespace, comm: Any, paths: dict[str, Path | None]) -> int:
    """Load or build the network, train it, write the files and print the result."""
    from ..data import load_dataset
    from ..optim import make_schedule

    root = comm is None or comm.rank == 0
    quiet = args.quiet or not root
    model = load_model(args.resume, args.backend) if args.resume is not None else None
    s, opt = _settings_and_optimizer(args, model)
    if args.data is None and model is not None:
        _output_paths(args, {f"the data file that {args.resume} names": s.data})
    if paths["--save"] is not None and s.initial_epoch + s.epochs > MAX_STORED_EPOCHS:
        raise UsageError(
            f"--save: a model file records at most {MAX_STORED_EPOCHS:,} epochs of training, "
            f"and this run would reach epoch {s.initial_epoch + s.epochs:,}; train fewer epochs"
        )
    dataset = load_dataset(
        s.data, val_fraction=s.val_fraction, test_fraction=s.test_fraction, seed=s.split_seed,
        dtype=s.dtype, label_column=parse_label_column(s.label_column),
    )
    net = _network(args, s, dataset, model)
    schedule = make_schedule(s.schedule, s.schedule_epochs, s.step_size, s.gamma)
    metadata = _run_metadata(s, dataset, schedule)
    records: list[dict[str, Any]] = metadata["train"]["history"]
    save_path = paths["--save"] if root else None
    writer = None if save_path is None else _ModelWriter(net, opt, save_path, dataset, metadata,
                                                         s.seed)
    show_bar = not quiet and sys.stderr.isatty()
    if not quiet:
        say(_start_line(net, opt, s, dataset, comm, resuming=model is not None))

    callbacks: list[Callback] = [
        _EpochEnd(records, s.initial_epoch + s.epochs, quiet, show_bar, writer)
    ]
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
        if writer is not None and writer.saved_epoch is not None:
            raise KeyboardInterrupt(_interrupted_message(writer)) from None
        raise
    epochs_done = s.initial_epoch + len(history)
    stopped = len(history) < s.epochs
    if stopped:  # early stopping ended the run: a plain --resume has nothing left to do
        metadata["train"].update(planned_epochs=epochs_done, stopped_early=True)
    test = net.evaluate(dataset.X_test, dataset.y_test) if len(dataset.y_test) else None
    if root:
        metrics = _metrics(net, opt, s.batch_size, dataset, schedule, records, test)
        _write_files(paths, writer, epochs_done, metrics,
                     title=f"{describe(net)} on {dataset.name}")
        _print_result(paths, test, len(dataset.y_test), epochs_done if stopped else None, quiet)
    return 0


def _settings_and_optimizer(args: argparse.Namespace, model: Any) -> tuple[Any, Any]:
    """The run's settings (flags, else the resumed model's, else the defaults) and its
    optimizer, with the resumed optimizer's state."""
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
    return s, opt


def _network(args: argparse.Namespace, s: Any, dataset: Any, model: Any) -> Any:
    """A new network sized for the data, or the resumed model after checking that it fits."""
    import gpunn

    if model is None:
        return gpunn.Network(
            [dataset.n_features, *s.hidden, dataset.n_classes], activation=s.activation,
            output=s.output, loss=s.loss, init=s.init, backend=args.backend, dtype=s.dtype,
            seed=s.seed,
        )
    if dataset.n_features != model.sizes[0] or dataset.n_classes > model.sizes[-1]:
        raise UsageError(
            f"{dataset.name} has {dataset.n_features} features and {dataset.n_classes} "
            f"classes; the model in {args.resume} takes {model.sizes[0]} features and "
            f"{model.sizes[-1]} outputs"
        )
    return model


def _run_metadata(s: Any, dataset: Any, schedule: Any) -> dict[str, Any]:
    """What the model file stores besides the network, for --resume and evaluate: the data and
    its split, and the run (its "history" list collects the epoch records)."""
    return {
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
            "planned_epochs": s.initial_epoch + s.epochs,
            "history": s.history,
        },
    }


CHECKPOINT_SECONDS = 1.0
"""The least training time between two writes of the model file during a run."""
CHECKPOINT_SHARE = 0.1
"""The most time, as a share of the training between them, that such writes may take."""


class _ModelWriter:
    """Writes the model file (--save) after epochs, so that an interrupted run can resume.

    A write costs time that grows with the model and its history; after many short epochs it
    would cost more than the training. So after the first epoch, the file is written again
    only once training has gone on for CHECKPOINT_SECONDS, and long enough for the last write
    to be at most CHECKPOINT_SHARE of it; the caller writes the final epoch with :meth:`save`.
    """

    def __init__(self, net: Any, opt: Any, path: Path, dataset: Any, metadata: dict[str, Any],
                 fit_seed: int) -> None:
        self.net, self.opt, self.path, self.metadata, self.fit_seed = (
            net, opt, path, metadata, fit_seed)
        self.arrays = dataset.scaler.to_arrays() if dataset.scaler is not None else {}
        self.saved_epoch: int | None = None
        self._saved_at = self._write_seconds = 0.0

    def after_epoch(self, epoch: int) -> None:
        waited = time.monotonic() - self._saved_at
        due = max(CHECKPOINT_SECONDS, self._write_seconds / CHECKPOINT_SHARE)
        if self.saved_epoch is None or waited >= due:
            self.save(epoch)

    def save(self, epoch: int) -> None:
        start = time.monotonic()
        self.net.optimizer = self.opt  # fit sets it only at the end; the checkpoint needs it now
        self.net.save(self.path, epoch=epoch, arrays=self.arrays, metadata=self.metadata,
                      fit_seed=self.fit_seed)
        self._saved_at = time.monotonic()
        self._write_seconds = self._saved_at - start
        self.saved_epoch = epoch


def _start_line(net: Any, opt: Any, s: Any, dataset: Any, comm: Any, resuming: bool) -> str:
    """``training 784-100-10 (...) on mnist-subset (3500 train, ...): sgd lr 0.1, ...``"""
    ranks = f", {comm.size} ranks" if comm is not None and comm.size > 1 else ""
    return (
        f"{'resuming' if resuming else 'training'} {describe(net)} on {dataset.name} "
        f"({len(dataset.y_train)} train, {len(dataset.y_val)} validation, "
        f"{len(dataset.y_test)} test samples): {opt.name} lr {opt.base_lr:g}, batch "
        f"{s.batch_size}, epochs {s.initial_epoch + 1}-{s.initial_epoch + s.epochs}, "
        f"{net.backend.name} {net.dtype.name}{ranks}"
    )


def _interrupted_message(writer: _ModelWriter) -> str:
    return (
        f"interrupted; the model after epoch {writer.saved_epoch} is in {writer.path}: "
        f"continue with 'gpunn train --resume {writer.path}'"
    )


def _metrics(net: Any, opt: Any, batch_size: int, dataset: Any, schedule: Any,
             records: list[dict[str, Any]], test: dict[str, Any] | None) -> dict[str, Any]:
    """The --metrics JSON: the run's settings, its epoch records and the test result."""
    import gpunn

    return {
        "gpunn_version": gpunn.__version__,
        "dataset": dataset.name,
        "network": net.config(),
        "optimizer": opt.config(),
        "batch_size": batch_size,
        "schedule": schedule.config(),
        "backend": net.backend.name,
        "epochs": records,
        "test": None if test is None else {**test, "samples": len(dataset.y_test)},
    }


def _write_files(paths: dict[str, Path | None], writer: _ModelWriter | None,
                 epoch: int, metrics: dict[str, Any], title: str) -> None:
    """The files of the finished run: the model (with early stopping, its best epoch's
    weights), the metrics JSON and the training curve."""
    if writer is not None:
        writer.save(epoch)
    if paths["--metrics"] is not None:
        write_text(paths["--metrics"], json.dumps(metrics, indent=2) + "\n")
    if paths["--plot"] is not None:
        write_plot(paths["--plot"], metrics["epochs"], title=title)


def _print_result(paths: dict[str, Path | None], test: dict[str, Any] | None, n_test: int,
                  stopped_after: int | None, quiet: bool) -> None:
    """The closing lines: early stopping, the test result, the files written."""
    if stopped_after is not None and not quiet:
        say(f"early stopping after epoch {stopped_after}: the validation loss stopped "
            "improving; keeping the best epoch's weights")
    if test is not None:
        say(f"test accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}  "
            f"({n_test} held-out samples)")
    else:
        say("no test part (--test-fraction 0): nothing held out to report")
    if quiet:
        return
    for what, flag in (("model", "--save"), ("metrics", "--metrics"), ("plot", "--plot")):
        if paths[flag] is not None:
            say(f"{what} written to {paths[flag]}")
