"""The ``gpunn`` command line: ``gpunn train | evaluate | predict | bench | info``.

``main(argv)`` parses the arguments and runs one command; it returns the exit status. A user
mistake (a missing file, a bad flag value, an invalid combination, any :class:`GpunnError`, an
interrupt) ends with one line ``gpunn: error: ...`` on stderr and a non-zero status, without a
traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .train import Callback

PROG = "gpunn"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

# What a plain `gpunn train` does: about 5 s for 0.94 test accuracy on the MNIST subset on a
# 2-core CPU (see the train --help epilog).
TRAIN_DEFAULTS: dict[str, Any] = {
    "data": "mnist-subset",
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "hidden": (100,),
    "activation": "relu",
    "output": "softmax",
    "loss": "cross_entropy",
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "constant",
    "step_size": 10,
    "gamma": 0.1,
    "epochs": 30,
    "batch_size": 10,
    "dtype": "float32",
    "seed": 0,
}


class UsageError(Exception):
    """A command line that cannot run: a bad flag, value or combination (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


_FORMATTER = argparse.RawDescriptionHelpFormatter


# ---------------------------------------------------------------------------- value parsers
def parse_hidden(text: str) -> tuple[int, ...]:
    """``"100,50"`` → (100, 50); ``""`` or ``"none"`` → () (no hidden layer)."""
    cleaned = text.strip().lower()
    if cleaned in ("", "none"):
        return ()
    sizes = []
    for part in cleaned.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a list of hidden layer sizes: write positive integers "
                "separated by commas, e.g. 100 or 100,50 (or 'none')"
            )
        sizes.append(int(part))
    return tuple(sizes)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number greater than 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number, 0 or more")
    return value


def fraction(text: str) -> float:
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must lie in [0, 1)")
    return value


def _whole_number(text: str, minimum: int, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be {bound}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _whole_number(text, 0, "0 or more")


# ---------------------------------------------------------------------------- the parser
TOP_EPILOG = """\
examples:
  gpunn train                                   # MNIST subset: seconds, about 0.94 accuracy
  gpunn train --data digits --hidden 64 --epochs 20 --save digits.npz
  gpunn evaluate digits.npz --data digits
  gpunn predict digits.npz samples.csv --out predictions.csv
  gpunn info                                    # versions, backends, GPU, BLAS threads
  gpunn bench --quick                           # training throughput per backend

Run 'gpunn COMMAND --help' for the flags of a command.
"""

TRAIN_EPILOG = """\
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

EVALUATE_EPILOG = """\
The model's stored min-max scaler scales the data as in training. By default the data and its
split are those the model was trained on (the test part is the held-out one).

examples:
  gpunn evaluate model.npz                       # the held-out test part of its training data
  gpunn evaluate model.npz --data digits --split all
  gpunn evaluate model.npz --data test.npz --split all
"""

PREDICT_EPILOG = """\
INPUT is an .npz file with an array X (samples in rows; images are flattened), an .npy array,
or a .csv file of feature columns without labels (a header row is optional). Features are
scaled with the scaler stored in the model file. The output CSV has one row per sample: the
predicted class and the network's output per class (probabilities with a softmax output).

examples:
  gpunn predict model.npz samples.csv --out predictions.csv
  gpunn predict model.npz images.npz --out predictions.csv --backend numpy
"""

INFO_EPILOG = """\
examples:
  gpunn info
  GPUNN_BACKEND=numpy gpunn info
"""

BENCH_EPILOG = """\
examples:
  gpunn bench --quick
  gpunn bench --configs seed,mlp-b128 --backends numpy --json results.json --plot results.png
"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``gpunn`` parser; the bench flags are added only when ``command`` is bench."""
    parser = _Parser(
        prog=PROG,
        description="Feedforward neural networks trained with backpropagation and mini-batch "
        "SGD, on NumPy (CPU) or CuPy (NVIDIA GPU).",
        epilog=TOP_EPILOG,
        formatter_class=_FORMATTER,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"gpunn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    common = _Parser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def add(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, epilog=epilog,
            formatter_class=_FORMATTER, parents=[common],
        )

    _add_train(add("train", "train a network on a dataset", TRAIN_EPILOG))
    _add_evaluate(add("evaluate", "print a model's loss and accuracy on data", EVALUATE_EPILOG))
    _add_predict(add("predict", "write a model's predictions for inputs as CSV", PREDICT_EPILOG))
    info = add("info", "print versions, backends, GPU and BLAS of this machine", INFO_EPILOG)
    info.set_defaults(run=run_info)
    _add_bench(add("bench", "measure training throughput per backend", BENCH_EPILOG), command)
    return parser


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=("auto", "numpy", "cupy"), default="auto",
        help="where the arrays live: numpy (CPU), cupy (NVIDIA GPU) or auto (the GPU when one "
        "works here; env GPUNN_BACKEND) [auto]",
    )
    _add_tf32(parser)


def _add_tf32(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tf32", action="store_true",
        help="GPU: float32 matrix products on tensor cores in TensorFloat-32 (faster, products "
        "rounded to a 10-bit mantissa; env GPUNN_TF32=1)",
    )


def _add_train(p: argparse.ArgumentParser) -> None:
    from .backend import HIDDEN_ACTIVATIONS, LOSSES, OUTPUT_ACTIVATIONS
    from .network import INITS
    from .optim import OPTIMIZERS, SCHEDULES

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
    _add_backend(run)
    run.add_argument("--distributed", choices=("mpi", "nccl", "auto"),
                     help="data-parallel over the ranks of mpiexec (rank 0 prints and writes)")
    run.add_argument("--save", metavar="PATH", help="write the model file here (every epoch)")
    run.add_argument("--resume", metavar="PATH", help="continue training the model in PATH")
    run.add_argument("--metrics", metavar="PATH", help="write per-epoch metrics as JSON")
    run.add_argument("--plot", metavar="PATH", help="write the training curve as PNG")
    run.add_argument("--quiet", action="store_true", help="print only the test result")
    p.set_defaults(run=run_train)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model file written by 'gpunn train --save'")
    p.add_argument("--data", metavar="SPEC", help="dataset spec [the model's training data]")
    p.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                   help="which part of the data [test]; 'all' uses every sample")
    p.add_argument("--label-column", metavar="COLUMN", help="CSV label column")
    _add_backend(p)
    p.set_defaults(run=run_evaluate)


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model file written by 'gpunn train --save'")
    p.add_argument("input", metavar="INPUT", help="samples: .npz (array X), .npy or .csv")
    p.add_argument("--out", required=True, metavar="PATH", help="the CSV file to write")
    _add_backend(p)
    p.set_defaults(run=run_predict)


def _add_bench(p: argparse.ArgumentParser, command: str | None) -> None:
    p.set_defaults(run=run_bench)
    if command != "bench":
        return
    try:
        from . import bench
    except ImportError as exc:
        p.set_defaults(bench_unavailable=f"gpunn bench is not available here: {exc}")
        return
    bench.add_arguments(p)
    _add_tf32(p)
    if not any("--quiet" in action.option_strings for action in p._actions):
        p.add_argument("--quiet", action="store_true", help="no progress messages")


# ---------------------------------------------------------------------------- helpers
def _say(text: str = "", *, to_err: bool = False) -> None:
    print(text, file=sys.stderr if to_err else sys.stdout, flush=True)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    """Warnings as one line each (not Python's file:line format)."""
    text = _one_line(message).removeprefix(f"{PROG}: ")
    print(f"{PROG}: warning: {text}", file=sys.stderr, flush=True)


def _check_output_path(flag: str, path: str | None) -> Path | None:
    """Refuse, before any work, an output file whose folder does not exist."""
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist")
    return target


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            '--plot needs matplotlib, which is not installed: pip install "gpunn[plot]"'
        ) from None


def _finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics record for JSON: non-finite floats (a 0-second epoch's rate) become null."""
    return {
        k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()
    }


def _write_text(path: Path, text: str) -> None:
    from .io import atomic_write

    atomic_write(path, lambda handle: handle.write(text.encode()))


def _load_model(path: str, backend: str) -> Any:
    """``gpunn.load``, after checking that the file exists (before any backend is set up)."""
    import gpunn

    from .errors import ModelFileError

    target = Path(path).expanduser()
    if not target.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    return gpunn.load(target, backend=backend)


def _scaler_of(net: Any) -> Any:
    """The min-max scaler stored in a model file, or None if it has none."""
    from .data import MinMaxScaler

    arrays = net.checkpoint.arrays if net.checkpoint is not None else {}
    if "scaler_min" not in arrays:
        return None
    return MinMaxScaler.from_arrays(arrays)


def _model_metadata(net: Any) -> dict[str, Any]:
    meta = net.checkpoint.meta.get("metadata") if net.checkpoint is not None else None
    return meta if isinstance(meta, dict) else {}


def _describe(net: Any) -> str:
    arch = "-".join(str(n) for n in net.sizes)
    return f"{arch} ({net.activation}/{net.output}/{net.loss_name})"


# ---------------------------------------------------------------------------- train
class _TrainSettings:
    """The resolved settings of one ``gpunn train`` run (flags, checkpoint, defaults)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def _resolve(args: argparse.Namespace, ckpt: Any, model: Any) -> _TrainSettings:
    """Settings from the flags; with --resume, the model file's settings fill what is not given
    and the architecture, optimizer and seed must match it."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    d = TRAIN_DEFAULTS
    if model is None:
        hidden = given.get("hidden", d["hidden"])
        activation = given.get("activation", d["activation"])
        init = given.get("init") or ("he" if activation == "relu" else "normal")
        s = _TrainSettings(
            data=given.get("data", d["data"]),
            label_column=given.get("label_column"),
            val_fraction=given.get("val_fraction", d["val_fraction"]),
            test_fraction=given.get("test_fraction", d["test_fraction"]),
            hidden=tuple(hidden),
            activation=activation,
            output=given.get("output", d["output"]),
            loss=given.get("loss", d["loss"]),
            init=init,
            dtype=given.get("dtype", d["dtype"]),
            seed=given.get("seed", d["seed"]),
            optimizer_config=None,
            batch_size=given.get("batch_size", d["batch_size"]),
            epochs=given.get("epochs", d["epochs"]),
            initial_epoch=0,
            history=[],
        )
        s.schedule_epochs = given.get("schedule_epochs", s.epochs)
        s.schedule = given.get("schedule", d["schedule"])
        s.step_size = given.get("step_size", d["step_size"])
        s.gamma = given.get("gamma", d["gamma"])
        s.optimizer = given.get("optimizer", d["optimizer"])
        return s

    # ---- resuming: the model file decides what the flags do not
    meta = _model_metadata(model)
    train_meta = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    where = f"the model in {args.resume}"
    fixed = {
        "hidden": tuple(model.sizes[1:-1]),
        "activation": model.activation,
        "output": model.output,
        "loss": model.loss_name,
        "init": model.init,
        "dtype": model.dtype.name,
    }
    for key, value in fixed.items():
        if key in given and _as_tuple(given[key]) != _as_tuple(value):
            flag = "--" + key.replace("_", "-")
            shown = ",".join(map(str, value)) if key == "hidden" else value
            raise UsageError(
                f"{flag} {_flag_text(given[key])} differs from {where} ({shown or 'none'}); "
                f"a resumed model keeps its architecture: leave out {flag}"
            )
    fit_seed = int(ckpt.meta.get("fit_seed", model.seed))
    if "seed" in given and given["seed"] != fit_seed:
        raise UsageError(
            f"--seed {given['seed']} differs from {where} (seed {fit_seed}); leave out --seed "
            "to continue the same run"
        )
    opt_config = dict(ckpt.meta.get("optimizer") or {})
    if opt_config and "optimizer" in given and given["optimizer"] != opt_config.get("name"):
        raise UsageError(
            f"--optimizer {given['optimizer']} differs from {where} "
            f"({opt_config.get('name')}): its saved state belongs to that optimizer"
        )
    schedule = train_meta.get("schedule") if isinstance(train_meta.get("schedule"), dict) else {}
    done = ckpt.epoch
    planned = int(train_meta.get("planned_epochs", done))
    epochs = given.get("epochs")
    if epochs is None:
        epochs = planned - done
        if epochs < 1:
            raise UsageError(
                f"{where} has trained all {planned} epoch(s) its run planned; pass --epochs N "
                "to train N more"
            )
    s = _TrainSettings(
        data=given.get("data", meta.get("data", d["data"])),
        label_column=given.get("label_column", meta.get("label_column")),
        val_fraction=given.get("val_fraction", meta.get("val_fraction", d["val_fraction"])),
        test_fraction=given.get("test_fraction", meta.get("test_fraction", d["test_fraction"])),
        seed=fit_seed,
        split_seed=int(meta.get("split_seed", fit_seed)),
        optimizer_config=opt_config or None,
        optimizer=opt_config.get("name") or given.get("optimizer", d["optimizer"]),
        batch_size=given.get("batch_size", train_meta.get("batch_size", d["batch_size"])),
        epochs=epochs,
        initial_epoch=done,
        history=list(train_meta.get("history") or []),
        schedule=given.get("schedule", schedule.get("name", d["schedule"])),
        step_size=given.get("step_size", schedule.get("step_size", d["step_size"])),
        gamma=given.get("gamma", schedule.get("gamma", d["gamma"])),
        schedule_epochs=given.get(
            "schedule_epochs", schedule.get("epochs", max(planned, done + epochs))
        ),
        **fixed,
    )
    return s


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _flag_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _make_optimizer(s: _TrainSettings, given: dict[str, Any], ckpt: Any) -> Any:
    from .optim import make_optimizer, optimizer_from_config

    takes_momentum = s.optimizer in ("momentum", "nesterov")
    if "momentum" in given and not takes_momentum:
        raise UsageError(
            f"--momentum applies to the momentum and nesterov optimizers, not {s.optimizer}"
        )
    if s.optimizer_config is not None:  # resuming: the saved settings, overridden by flags
        overrides = {k: given[k] for k in ("lr", "momentum", "weight_decay") if k in given}
        if not overrides:
            return ckpt.optimizer()
        return optimizer_from_config({**s.optimizer_config, **overrides})
    options: dict[str, Any] = {"weight_decay": given.get("weight_decay", 0.0)}
    if takes_momentum:
        options["momentum"] = given.get("momentum", TRAIN_DEFAULTS["momentum"])
    return make_optimizer(s.optimizer, given.get("lr"), **options)


def _check_schedule_flags(s: _TrainSettings, given: dict[str, Any]) -> None:
    for flag, key, needs in (("--step-size", "step_size", "step"), ("--gamma", "gamma", "step"),
                             ("--schedule-epochs", "schedule_epochs", "cosine")):
        if key in given and s.schedule != needs:
            raise UsageError(f"{flag} applies to --schedule {needs}, not {s.schedule}")


class _EpochEnd(Callback):
    """After each epoch: print the progress line, keep the record, checkpoint the model."""

    def __init__(self, report: Callable[[dict[str, Any]], None],
                 save: Callable[[int], None] | None) -> None:
        self.report, self.save = report, save

    def on_epoch_end(self, net: Any, record: dict[str, Any]) -> bool:
        self.report(record)
        if self.save is not None:
            self.save(int(record["epoch"]))
        return False

    def on_train_end(self, net: Any, history: Any) -> None:
        """The final save happens in run_train, after early stopping restored its weights."""


def run_train(args: argparse.Namespace) -> int:
    import gpunn

    save_path = _check_output_path("--save", args.save)
    metrics_path = _check_output_path("--metrics", args.metrics)
    plot_path = _check_output_path("--plot", args.plot)
    if plot_path is not None:
        _require_matplotlib()
    if args.resume is not None and not Path(args.resume).expanduser().is_file():
        raise UsageError(f"--resume {args.resume}: the model file does not exist")

    comm = None
    if args.distributed:
        try:
            from . import distributed
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

    from .data import load_dataset
    from .train import EarlyStopping

    root = comm is None or comm.rank == 0
    quiet = args.quiet or not root

    model = None
    if args.resume is not None:
        model = _load_model(args.resume, args.backend)
    ckpt = model.checkpoint if model is not None else None
    s = _resolve(args, ckpt, model)
    given = {k: v for k, v in vars(args).items() if v is not None}
    _check_schedule_flags(s, given)
    opt = _make_optimizer(s, given, ckpt)
    if ckpt is not None and s.optimizer_config is not None:
        opt.load_state_arrays(model.backend, ckpt.optimizer_state, model.dtype)
    if args.early_stopping and s.val_fraction == 0:
        raise UsageError(
            "--early-stopping watches the validation loss: it needs --val-fraction above 0"
        )
    split_seed = getattr(s, "split_seed", s.seed)

    dataset = load_dataset(
        s.data, val_fraction=s.val_fraction, test_fraction=s.test_fraction, seed=split_seed,
        dtype=s.dtype, label_column=_label_column(s.label_column),
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

    from .optim import make_schedule

    schedule = make_schedule(s.schedule, s.schedule_epochs, s.step_size, s.gamma)
    last_epoch = s.initial_epoch + s.epochs
    metadata = {
        "dataset": dataset.name,
        "data": str(s.data),
        "label_column": s.label_column,
        "val_fraction": s.val_fraction,
        "test_fraction": s.test_fraction,
        "split_seed": split_seed,
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
            _say(line)

    if not quiet:
        what = "resuming" if model is not None else "training"
        _say(
            f"{what} {_describe(net)} on {dataset.name} ({len(dataset.y_train)} train, "
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
            _write_text(metrics_path, json.dumps(payload, indent=2) + "\n")
        if plot_path is not None:
            write_plot(plot_path, history_records, title=f"{_describe(net)} on {dataset.name}")
        if stopped and not quiet:
            _say(f"early stopping after epoch {epochs_done}: the validation loss stopped "
                 "improving; keeping the best epoch's weights")
        if test is not None:
            _say(f"test accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}  "
                 f"({len(dataset.y_test)} held-out samples)")
        else:
            _say("no test part (--test-fraction 0): nothing held out to report")
        for flag, path in (("model", save_path), ("metrics", metrics_path), ("plot", plot_path)):
            if path is not None and not quiet:
                _say(f"{flag} written to {path}")
    return 0


def _label_column(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def write_plot(path: str | os.PathLike[str], records: Sequence[dict[str, Any]],
               title: str = "") -> None:
    """A PNG of the training curve: loss and validation loss, and validation accuracy."""
    from matplotlib.figure import Figure  # lazily: only --plot needs matplotlib

    from .io import atomic_write

    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["loss"] for r in records], marker=".", label="training loss")
    val = [(r["epoch"], r["val_loss"], r["val_accuracy"]) for r in records if "val_loss" in r]
    if val:
        ax_loss.plot([v[0] for v in val], [v[1] for v in val], marker=".",
                     label="validation loss")
        ax_acc.plot([v[0] for v in val], [v[2] for v in val], marker=".", color="tab:green",
                    label="validation accuracy")
        ax_acc.legend()
    else:
        ax_acc.text(0.5, 0.5, "no validation data", ha="center", va="center",
                    transform=ax_acc.transAxes)
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_loss.legend()
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))


# ---------------------------------------------------------------------------- evaluate
def run_evaluate(args: argparse.Namespace) -> int:

    from .data import load_dataset

    net = _load_model(args.model, args.backend)
    meta = _model_metadata(net)
    spec = args.data or meta.get("data")
    if spec is None:
        raise UsageError(f"{args.model} does not name its training data: pass --data SPEC")
    same_data = args.data is None or args.data == meta.get("data")
    label_column = args.label_column if args.label_column is not None else (
        meta.get("label_column") if same_data else None)
    scaler = _scaler_of(net)
    dataset = load_dataset(
        spec,
        val_fraction=meta.get("val_fraction", TRAIN_DEFAULTS["val_fraction"]) if same_data
        else TRAIN_DEFAULTS["val_fraction"],
        test_fraction=meta.get("test_fraction", TRAIN_DEFAULTS["test_fraction"]) if same_data
        else TRAIN_DEFAULTS["test_fraction"],
        seed=int(meta.get("split_seed", net.seed)) if same_data else 0,
        scale=scaler is None, dtype=net.dtype.name, label_column=_label_column(label_column),
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
    _say(f"model     {args.model}: {_describe(net)}")
    _say(f"data      {dataset.name}, {args.split} part, {len(y)} samples")
    _say(f"loss      {result['loss']:.6f}")
    _say(f"accuracy  {result['accuracy']:.4f}  ({round(result['accuracy'] * len(y))}/{len(y)})")
    return 0


# ---------------------------------------------------------------------------- predict
def read_inputs(path: Path) -> Any:
    """Samples from .npz (array X, or its only array), .npy or .csv (numeric, no labels)."""
    import numpy

    from .errors import DataError

    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
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
            raise DataError(f"{path} is not a readable NumPy file: {_one_line(exc)}") from None
        if X.dtype.kind not in "biuf":
            raise DataError(f"{path}: X has dtype {X.dtype}; it must hold numbers")
        if X.ndim > 2:
            X = X.reshape(X.shape[0], -1)
        return X
    if name.endswith(".csv"):
        with path.open(newline="") as handle:
            rows = [row for row in csv.reader(handle) if row and any(c.strip() for c in row)]
        if rows and not all(_is_number(c) for c in rows[0]):
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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def run_predict(args: argparse.Namespace) -> int:

    from .errors import DataError

    out = _check_output_path("--out", args.out)
    inputs = Path(args.input).expanduser()
    if not inputs.is_file():
        raise DataError(f"input file {args.input} does not exist")
    net = _load_model(args.model, args.backend)
    X = read_inputs(inputs)
    if X.ndim != 2 or X.shape[1] != net.sizes[0]:
        got = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
        extra = " (drop the label column)" if X.ndim == 2 and X.shape[1] == net.sizes[0] + 1 else ""
        raise DataError(
            f"{args.input} has {got} features per sample but the model takes "
            f"{net.sizes[0]}{extra}"
        )
    scaler = _scaler_of(net)
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
    _write_text(out, text.getvalue())
    _say(f"predictions for {len(predicted)} samples written to {args.out}")
    return 0


# ---------------------------------------------------------------------------- info, bench
def run_info(args: argparse.Namespace) -> int:
    try:
        from .bench.sysinfo import format_machine_info, machine_info
    except ImportError:
        _say(_minimal_info())
        return 0
    _say(format_machine_info(machine_info()))
    return 0


def _minimal_info() -> str:
    import platform

    import numpy

    import gpunn

    from .backend import unavailable_reason

    reason = unavailable_reason()
    lines = [
        f"gpunn      {gpunn.__version__}",
        f"python     {platform.python_version()}",
        f"numpy      {numpy.__version__}",
        f"backends   {', '.join(gpunn.available_backends())}",
        f"gpu        {'usable' if reason is None else 'none usable: ' + reason}",
    ]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    unavailable = getattr(args, "bench_unavailable", None)
    if unavailable:
        raise UsageError(unavailable)
    from . import bench

    return int(bench.main(args) or 0)


# ---------------------------------------------------------------------------- entry point
def _command_of(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gpunn`` command line on ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from .errors import GpunnError

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        parser = build_parser(_command_of(argv))
        args = parser.parse_args(argv)
        if getattr(args, "tf32", False):  # read when the CuPy backend is created
            os.environ["GPUNN_TF32"] = "1"
        return int(args.run(args) or 0)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt as exc:
        message = str(exc) or "interrupted"
        return _fail(message, EXIT_INTERRUPTED, debug)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE, debug)
    except (GpunnError, OSError, MemoryError) as exc:
        return _fail(_error_text(exc), EXIT_ERROR, debug)
    except BrokenPipeError:  # pragma: no cover - `gpunn ... | head`
        return EXIT_ERROR
    except Exception as exc:
        return _fail(
            f"unexpected {type(exc).__name__}: {exc} (this is a bug in gpunn; run again with "
            "--debug for the traceback and report it)", EXIT_ERROR, debug,
        )
    finally:
        warnings.showwarning = previous


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, MemoryError) and not str(exc):
        return "out of memory; try a smaller --batch-size or network"
    return str(exc) or type(exc).__name__


def _fail(message: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    try:
        print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):  # pragma: no cover
        pass
    return status
