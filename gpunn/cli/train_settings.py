"""The settings of one ``gpunn train`` run: the flags given, else (with --resume) the model
file's, else the defaults; and the optimizer they describe."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ModelFileError
from ..optim import SCHEDULES
from .models import stored_metadata
from .parsing import UsageError

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


MAX_STORED_EPOCHS = 100_000
"""The most epochs a model file's metadata may plan (its planned epochs, a cosine schedule's
length, its history): more is a damaged or hostile file, and resuming it would run for days."""
MAX_SEED = 2**63 - 1


def _whole(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and low <= value <= high


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _history_record(record: Any) -> bool:
    """An epoch's record as gpunn train stores it: its epoch, and numbers (or null)."""
    return (
        isinstance(record, dict)
        and _whole(1, MAX_STORED_EPOCHS)(record.get("epoch"))
        and "loss" in record
        and ("val_loss" in record) == ("val_accuracy" in record)
        and all(isinstance(key, str) and (value is None or _number(value))
                for key, value in record.items())
    )


@dataclass(frozen=True)
class StoredField:
    """How a value that ``gpunn train`` stores in a model file's metadata is checked."""

    wants: str
    """What it must be, for the message."""
    check: Callable[[Any], bool]
    advice: str = ""
    """What to do instead of relying on it, for the message ("" if there is nothing)."""


STORED_FIELDS: dict[str, StoredField] = {
    "data": StoredField("a data spec (text)", lambda v: isinstance(v, str) and v != "",
                        "pass --data SPEC"),
    "label_column": StoredField("a column name or number, or null",
                                lambda v: v is None or type(v) in (str, int),
                                "pass --label-column COLUMN"),
    "val_fraction": StoredField("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1,
                                "to resume, pass --val-fraction F"),
    "test_fraction": StoredField("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1,
                                 "to resume, pass --test-fraction F"),
    "split_seed": StoredField(f"a whole number from 0 to {MAX_SEED}", _whole(0, MAX_SEED)),
    "train": StoredField("a JSON object", lambda v: isinstance(v, dict)),
    "train.batch_size": StoredField("a whole number from 1 to 2**31", _whole(1, 2**31),
                                    "to resume, pass --batch-size N"),
    "train.schedule": StoredField("a JSON object", lambda v: isinstance(v, dict),
                                  "to resume, pass --schedule NAME"),
    "train.schedule.name": StoredField(f"one of {', '.join(SCHEDULES)}",
                                       lambda v: v in SCHEDULES, "to resume, pass --schedule NAME"),
    "train.schedule.step_size": StoredField(
        f"a whole number from 1 to {MAX_STORED_EPOCHS}", _whole(1, MAX_STORED_EPOCHS),
        "to resume, pass --step-size N"),
    "train.schedule.gamma": StoredField("a positive number", lambda v: _number(v) and v > 0,
                                        "to resume, pass --gamma G"),
    "train.schedule.epochs": StoredField(
        f"a whole number from 1 to {MAX_STORED_EPOCHS}", _whole(1, MAX_STORED_EPOCHS),
        "to resume, pass --schedule-epochs N"),
    "train.planned_epochs": StoredField(
        f"a whole number from 0 to {MAX_STORED_EPOCHS}", _whole(0, MAX_STORED_EPOCHS),
        "to resume, pass --epochs N to say how many epochs to train (and --schedule-epochs N "
        "with a cosine schedule)"),
    "train.history": StoredField(
        f"a list of at most {MAX_STORED_EPOCHS} epoch records",
        lambda v: isinstance(v, list) and len(v) <= MAX_STORED_EPOCHS
        and all(map(_history_record, v))),
}
"""Every metadata field that resuming and evaluating read, keyed by its path."""


class StoredRun:
    """The settings that ``gpunn train`` stored in a model file's metadata, each checked by
    :data:`STORED_FIELDS` as it is read: a damaged or hostile value is a ModelFileError naming
    the field. Only what a run uses is read, so a flag given in its place avoids a bad one."""

    def __init__(self, model: Any, where: str) -> None:
        self.meta = stored_metadata(model)
        self.where = where

    def get(self, field: str, default: Any = None) -> Any:
        """The stored value of ``field`` (such as ``"train.batch_size"``), checked, along with
        the objects that hold it; ``default`` if it is absent."""
        value: Any = self.meta
        path: list[str] = []
        for key in field.split("."):
            if key not in value:
                return default
            value = value[key]
            path.append(key)
            self._check(".".join(path), value)
        return value

    def _check(self, field: str, value: Any) -> None:
        rule = STORED_FIELDS[field]
        if rule.check(value):
            return
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        advice = f": {rule.advice}" if rule.advice else ""
        raise ModelFileError(
            f"{self.where} has a bad {field} in its metadata ({shown}, not {rule.wants}); the "
            f"file is damaged or was not written by gpunn train{advice}"
        )


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """The resolved settings of one ``gpunn train`` run: each is the flag given, else (with
    --resume) the model file's value, else :data:`TRAIN_DEFAULTS`. Every field is required, so
    both branches of :func:`resolve_settings` fill all of them.

    Frozen: the fields are not reassigned. ``history`` is a list that the run appends its
    epoch records to (it is the list in the saved metadata).
    """

    # ---- data
    data: str
    """The --data spec: a bundled dataset's name, ``mnist:DIR``, ``FILE.npz`` or ``FILE.csv``."""
    label_column: str | None
    """The CSV label column as given or stored (``parse_label_column`` turns a whole number
    into an index); None: the data's default."""
    val_fraction: float
    """Share of the samples held out for validation."""
    test_fraction: float
    """Share of the samples held out for the test."""
    split_seed: int
    """Seed of the train / validation / test split: ``seed`` for a fresh run, the model file's
    split seed when resuming (so a resumed run trains on the same split)."""

    # ---- network (with --resume: the model's, which flags may repeat but not change)
    hidden: tuple[int, ...]
    """Hidden layer sizes; () for none."""
    activation: str
    """The hidden layers' activation."""
    output: str
    """The output layer's activation."""
    loss: str
    """The cost function."""
    init: str
    """The initial weights' scheme (he with relu, else normal, unless --init)."""
    dtype: str
    """The arrays' dtype name: float32 or float64."""
    seed: int
    """Seed of the weights and the batch order (when resuming, the run's fit seed)."""

    # ---- training
    optimizer: str
    """The optimizer's name."""
    optimizer_config: dict[str, Any] | None
    """The resumed optimizer's saved config; None for a fresh run (or a model file without
    one), whose optimizer comes from the flags."""
    batch_size: int
    """The mini-batch size."""
    epochs: int
    """Epochs this run trains (with --resume: more epochs)."""
    initial_epoch: int
    """Epochs already done: 0 for a fresh run, the checkpoint's epoch when resuming."""
    history: list[dict[str, Any]]
    """The per-epoch records so far: empty for a fresh run, the model file's when resuming."""
    schedule: str
    """The learning-rate schedule's name."""
    step_size: int
    """Step schedule: epochs between drops."""
    gamma: float
    """Step schedule: factor of each drop."""
    schedule_epochs: int
    """Cosine schedule: length of the plan in epochs."""


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags on the command line: those argparse left at None were not given."""
    return {k: v for k, v in vars(args).items() if v is not None}


def resolve_settings(args: argparse.Namespace, ckpt: Any, model: Any) -> TrainSettings:
    """Settings from the flags; with --resume, the model file's settings fill what is not given
    and the architecture, optimizer and seed must match it."""
    given = given_flags(args)
    d = TRAIN_DEFAULTS
    if model is None:
        hidden = given.get("hidden", d["hidden"])
        activation = given.get("activation", d["activation"])
        init = given.get("init") or ("he" if activation == "relu" else "normal")
        epochs = given.get("epochs", d["epochs"])
        seed = given.get("seed", d["seed"])
        return TrainSettings(
            data=given.get("data", d["data"]),
            label_column=given.get("label_column"),
            val_fraction=given.get("val_fraction", d["val_fraction"]),
            test_fraction=given.get("test_fraction", d["test_fraction"]),
            split_seed=seed,
            hidden=tuple(hidden),
            activation=activation,
            output=given.get("output", d["output"]),
            loss=given.get("loss", d["loss"]),
            init=init,
            dtype=given.get("dtype", d["dtype"]),
            seed=seed,
            optimizer=given.get("optimizer", d["optimizer"]),
            optimizer_config=None,
            batch_size=given.get("batch_size", d["batch_size"]),
            epochs=epochs,
            initial_epoch=0,
            history=[],
            schedule=given.get("schedule", d["schedule"]),
            step_size=given.get("step_size", d["step_size"]),
            gamma=given.get("gamma", d["gamma"]),
            schedule_epochs=given.get("schedule_epochs", epochs),
        )

    # ---- resuming: the model file decides what the flags do not
    where = f"the model in {args.resume}"
    run = StoredRun(model, where)

    def flag_or_stored(flag: str, field: str, default: Any) -> Any:
        return given[flag] if flag in given else run.get(field, default)
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
    done = ckpt.epoch
    epochs = given.get("epochs")
    if epochs is None:
        planned = run.get("train.planned_epochs", done)
        epochs = planned - done
        if epochs < 1:
            raise UsageError(
                f"{where} has trained all {planned} epoch(s) its run planned; pass --epochs N "
                "to train N more"
            )
    schedule = flag_or_stored("schedule", "train.schedule.name", d["schedule"])
    schedule_epochs = done + epochs
    if schedule == "cosine":  # the only schedule with a length: by default, the run's plan
        schedule_epochs = flag_or_stored("schedule_epochs", "train.schedule.epochs", None) or max(
            run.get("train.planned_epochs", done), schedule_epochs
        )
    return TrainSettings(
        data=flag_or_stored("data", "data", d["data"]),
        label_column=flag_or_stored("label_column", "label_column", None),
        val_fraction=flag_or_stored("val_fraction", "val_fraction", d["val_fraction"]),
        test_fraction=flag_or_stored("test_fraction", "test_fraction", d["test_fraction"]),
        seed=fit_seed,
        split_seed=run.get("split_seed", fit_seed),
        optimizer_config=opt_config or None,
        optimizer=opt_config.get("name") or given.get("optimizer", d["optimizer"]),
        batch_size=flag_or_stored("batch_size", "train.batch_size", d["batch_size"]),
        epochs=epochs,
        initial_epoch=done,
        history=list(run.get("train.history", [])),
        schedule=schedule,
        step_size=flag_or_stored("step_size", "train.schedule.step_size", d["step_size"]),
        gamma=flag_or_stored("gamma", "train.schedule.gamma", d["gamma"]),
        schedule_epochs=schedule_epochs,
        **fixed,
    )


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _flag_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def build_optimizer(s: TrainSettings, given: dict[str, Any], ckpt: Any) -> Any:
    """The run's optimizer: a fresh one from the flags, or the resumed one (its saved settings,
    overridden by --lr, --momentum and --weight-decay)."""
    from ..optim import make_optimizer, optimizer_from_config

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
    options: dict[str, Any] = {
        "weight_decay": given.get("weight_decay", TRAIN_DEFAULTS["weight_decay"])
    }
    if takes_momentum:
        options["momentum"] = given.get("momentum", TRAIN_DEFAULTS["momentum"])
    return make_optimizer(s.optimizer, given.get("lr"), **options)


def check_schedule_flags(s: TrainSettings, given: dict[str, Any]) -> None:
    """Refuse a schedule flag that the chosen schedule does not use."""
    for flag, key, needs in (("--step-size", "step_size", "step"), ("--gamma", "gamma", "step"),
                             ("--schedule-epochs", "schedule_epochs", "cosine")):
        if key in given and s.schedule != needs:
            raise UsageError(f"{flag} applies to --schedule {needs}, not {s.schedule}")
