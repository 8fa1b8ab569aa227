"""The training loop: epochs of mini-batch SGD on device-resident data.

Each epoch draws a permutation of the samples on the device (or keeps their order), cuts it into
mini-batches of ``batch_size`` rows (the last one smaller), and for each batch runs
feedforward, backpropagation with the cost averaged over that batch, and one optimizer update.
Nothing in the step loop reads data back to the host: the summed cost stays on the device and is
read once per epoch, together with what the divergence check needs (see :func:`fit`).
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy

from . import divergence, validation
from .backend import Array, Ops
from .distributed import Communicator, evaluate_distributed, verify_replicas
from .errors import DivergenceError, InputError, InputTypeError
from .network import Network, Workspace, quiet_floating_point
from .optim import Optimizer, Snapshot, make_optimizer, make_schedule

METRICS = ("epoch", "loss", "lr", "seconds", "samples_per_second")  # every epoch's record
VALIDATION_METRICS = ("val_loss", "val_accuracy")  # in the record too, with validation_data
# the metrics EarlyStopping can monitor, and whether a higher value is better
_HIGHER_IS_BETTER = {"val_loss": False, "val_accuracy": True, "loss": False}


class History:
    """Per-epoch metrics: ``history.records`` is a list of dicts, ``history["loss"]`` a column."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def append(self, record: dict[str, float]) -> None:
        self.records.append(record)

    def __getitem__(self, metric: str) -> list[float]:
        return [r[metric] for r in self.records if metric in r]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        last = self.records[-1] if self.records else {}
        return f"History({len(self)} epochs, last={last})"


class Callback:
    """Hooks called by :func:`fit`; return True from ``on_epoch_end`` to stop training."""

    def check_metrics(self, metrics: Sequence[str]) -> None:
        """Called before training starts, with the names of the metrics that every epoch's
        record will hold (:data:`METRICS`, and :data:`VALIDATION_METRICS` when fit has
        validation data); raise to refuse the run while the weights are untouched."""

    def on_train_begin(self, net: Network) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, net: Network, record: dict[str, float]) -> bool | None:
        """Called after each epoch with its metrics; True stops training."""
        return None

    def on_train_end(self, net: Network, history: History) -> None:
        """Called once after the last epoch."""


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs, and (with ``restore_best``) put back the weights of the best epoch.

    monitor: ``"val_loss"`` or ``"val_accuracy"`` (both need ``validation_data``), or
    ``"loss"``, the training loss. An accuracy improves when it rises, a loss when it falls.
    Every fit starts afresh, so one EarlyStopping may serve several fits.
    """

    def __init__(
        self,
        patience: int = 5,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        restore_best: bool = True,
    ) -> None:
        self.patience = validation.check_int("patience", patience, minimum=1)
        self.monitor = validation.check_choice("monitor", monitor, tuple(_HIGHER_IS_BETTER))
        self.min_delta = validation.check_float("min_delta", min_delta, minimum=0.0,
                                                inclusive=True)
        self.restore_best = validation.check_bool("restore_best", restore_best)
        self.higher_is_better = _HIGHER_IS_BETTER[self.monitor]
        self._start_afresh()

    def _start_afresh(self) -> None:
        self.best = -math.inf if self.higher_is_better else math.inf
        self.best_params: list[tuple[numpy.ndarray, numpy.ndarray]] | None = None
        self.waited = 0
        self.stopped_epoch: int | None = None

    def check_metrics(self, metrics: Sequence[str]) -> None:
        if self.monitor not in metrics:
            raise InputError(
                f"early stopping monitors {self.monitor!r}, which fit reports only with "
                "validation_data: pass validation_data, or monitor 'loss'"
            )

    def on_train_begin(self, net: Network) -> None:
        self._start_afresh()

    def _improves(self, value: float) -> bool:
        if self.higher_is_better:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, net: Network, record: dict[str, float]) -> bool:
        value = record[self.monitor]
        if self._improves(value):
            self.best, self.waited = value, 0
            if self.restore_best:
                self.best_params = net.get_params()
            return False
        self.waited += 1
        if self.waited >= self.patience:
            self.stopped_epoch = int(record["epoch"])
            return True
        return False

    def on_train_end(self, net: Network, history: History) -> None:
        if self.restore_best and self.best_params is not None and self.stopped_epoch is not None:
            net.set_params(self.best_params)


class _LambdaCallback(Callback):
    def __init__(self, function: Callable[[Network, dict[str, float]], bool | None]) -> None:
        self.function = function

    def on_epoch_end(self, net: Network, record: dict[str, float]) -> bool | None:
        return self.function(net, record)


def fit(
    net: Network,
    X: Any,
    Y: Any,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float | None = None,
    optimizer: str | Optimizer | None = None,
    validation_data: tuple[Any, Any] | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback | Callable[..., Any]] = (),
    schedule: str | Callable[[int], float] | None = None,
    initial_epoch: int = 0,
    total_epochs: int | None = None,
    comm: Communicator | None = None,
) -> History:
    """Train ``net`` on (X, Y) by mini-batch gradient descent; returns the per-epoch History.

    X: (n, n_in) samples; Y: integer labels (n,) or targets (n, n_out). Host arrays are copied
    to the device once; arrays already on the network's device are used as they are.
    epochs, batch_size, lr: the article's η and mini-batch size m; each step moves the
    parameters by −η times the gradient averaged over its batch (the last batch of an epoch
    may be smaller and is averaged over its own size).
    optimizer: "sgd" (default), "momentum", "nesterov", "adam" or an :class:`Optimizer`,
    which brings its own learning rate (giving ``lr`` as well is refused).
    shuffle, seed: each epoch's order is a permutation drawn on the device from ``seed``
    (default: the network's seed) and the epoch number; ``shuffle=False`` keeps the order.
    callbacks: a list of :class:`Callback` objects or functions (net, record) → True to stop.
    schedule: "step", "cosine" or a function epoch → factor of the learning rate.
    initial_epoch, total_epochs: resume at that epoch (the order and schedule continue as if
    the run had not stopped); total_epochs is the length the schedule plans for.
    comm: a communicator from :func:`gpunn.distributed.connect` for data-parallel training:
    every rank holds all of (X, Y) and the same network, takes its share of each mini-batch,
    and the gradients are summed across ranks before every update (see :func:`run_epoch`).

    Every option is checked before the first epoch (the schedule's factor for an epoch
    before that epoch). Divergence: after each epoch, fit raises
    :class:`~gpunn.errors.DivergenceError` when the epoch's summed cost or a weight is NaN or
    infinite, or when the weights the epoch ends with give an infinite cost on (X, Y) (see
    :mod:`gpunn.divergence`). The network then keeps the weights, and the optimizer its
    state, from the start of that epoch.
    """
    epochs = validation.check_int("epochs", epochs, minimum=1)
    batch_size = validation.check_int("batch_size", batch_size, minimum=1)
    initial_epoch = validation.check_int("initial_epoch", initial_epoch, minimum=0)
    shuffle = validation.check_bool("shuffle", shuffle)
    progress = validation.check_bool("progress", progress)
    seed = net.seed if seed is None else validation.check_int("seed", seed, minimum=0)
    if total_epochs is not None:
        total_epochs = validation.check_int("total_epochs", total_epochs, minimum=1)
    hooks = _as_callbacks(callbacks)
    group = _data_parallel_group(comm)
    opt = make_optimizer(optimizer, lr)
    plan = total_epochs if total_epochs is not None else initial_epoch + epochs
    lr_factor = make_schedule(schedule, plan)

    ops = net.backend
    opt.move_state(ops, net.dtype)  # an optimizer that trained a network elsewhere
    Xd, Yd, val = _device_data(net, X, Y, validation_data, batch_size)
    n = Xd.shape[0]
    if group is not None:
        verify_replicas(group, net, n, batch_size, seed)
        progress = progress and group.is_root
    metrics = METRICS + (VALIDATION_METRICS if val is not None else ())
    for hook in hooks:
        hook.check_metrics(metrics)
    for hook in hooks:
        hook.on_train_begin(net)

    history = History()
    epoch_start = _EpochStart(net, opt)
    data_max = divergence.data_magnitudes(ops, Xd, Yd)
    with (
        # the device running out of memory anywhere in training is reported with the batch size
        ops.memory_guard("training", batch_size,
                         Workspace.nbytes(net.sizes, batch_size, net.dtype)),
        ops.training_scope(),
        # a diverging run is reported once, as DivergenceError, not as NumPy overflow warnings
        quiet_floating_point(),
        _progress_bar(epochs, progress) as bar,
    ):
        for epoch in range(initial_epoch, initial_epoch + epochs):
            opt.lr = _learning_rate(opt, lr_factor, epoch)
            epoch_start.keep()
            started = time.perf_counter()
            cost = run_epoch(net, Xd, Yd, opt, batch_size, shuffle, seed, epoch, group)
            ops.synchronize()
            seconds = time.perf_counter() - started
            loss_sum, problem = divergence.check_epoch(net, cost, Xd, Yd, data_max, group)
            if problem is not None:
                epoch_start.restore()
                raise DivergenceError(
                    f"training diverged in epoch {epoch + 1}: {problem} (learning rate "
                    f"{opt.lr:g}). Try a lower learning rate; the network keeps the weights, "
                    "and the optimizer its state, from the start of that epoch"
                )
            record = _epoch_record(epoch, loss_sum / n, opt.lr, seconds, n)
            if val is not None:
                record.update(_validation_metrics(net, *val, group))
            history.append(record)
            _show(bar, record)
            stop = [hook.on_epoch_end(net, record) for hook in hooks]
            if any(stop):
                break
    for hook in hooks:
        hook.on_train_end(net, history)
    net.optimizer = opt
    return history


def _as_callbacks(callbacks: Any) -> list[Callback]:
    """``callbacks`` as a list of Callback objects (functions wrapped)."""
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Iterable):
        single = isinstance(callbacks, Callback) or callable(callbacks)
        hint = f"; for one callback pass callbacks=[{type(callbacks).__name__}(...)]" if single \
            else ""
        raise InputTypeError(
            "callbacks must be a list of gpunn.Callback objects or functions "
            f"(net, record) -> bool, got {callbacks!r}{hint}"
        )
    return [_as_callback(c) for c in callbacks]


def _as_callback(callback: Any) -> Callback:
    if isinstance(callback, Callback):
        return callback
    if callable(callback):
        return _LambdaCallback(callback)
    raise InputTypeError(
        f"callbacks must hold gpunn.Callback objects or functions (net, record) -> bool, "
        f"got {callback!r}"
    )


def _data_parallel_group(comm: Any) -> Communicator | None:
    """The communicator of a data-parallel fit; None for one process (no communicator, or a
    group of one)."""
    if comm is None:
        return None
    if not isinstance(comm, Communicator):
        raise InputTypeError(
            f"comm must be a communicator from gpunn.distributed.connect(), got "
            f"{type(comm).__name__}"
        )
    return comm if comm.size > 1 else None


def _device_data(
    net: Network, X: Any, Y: Any, validation_data: Any, batch_size: int
) -> tuple[Array, Array, tuple[Array, Array] | None]:
    """The training data and the validation pair (or None), checked and on the device."""
    with net.backend.memory_guard("copying the training data to the device", batch_size,
                                  _nbytes(X, Y)):
        Xd = net.device_inputs(X)
        Yd = net.device_targets(Y, Xd.shape[0])
        if validation_data is None:
            return Xd, Yd, None
        Xv, Yv = validation.check_validation_data(validation_data)
        Xv = net.device_inputs(Xv, "validation X")
        return Xd, Yd, (Xv, net.device_targets(Yv, Xv.shape[0], "validation Y"))


def _learning_rate(opt: Optimizer, lr_factor: Callable[[int], float], epoch: int) -> float:
    """The optimizer's base learning rate times the schedule's factor for ``epoch``, checked:
    a user's schedule may return anything, and a large factor may overflow the product."""
    factor = validation.check_float(
        f"the schedule's learning-rate factor for epoch {epoch}", lr_factor(epoch),
        minimum=0.0, inclusive=True,
    )
    lr = opt.base_lr * factor
    if not math.isfinite(lr):
        raise InputError(
            f"the learning rate for epoch {epoch}, {opt.base_lr:g} times the schedule's factor "
            f"{factor:g}, overflows the range of floats; use a schedule with smaller factors"
        )
    return lr


class _EpochStart:
    """The weights and the optimizer's state at the start of the running epoch, to go back to
    if it diverges: one device copy per epoch into buffers allocated once (the optimizer's,
    once its state exists)."""

    def __init__(self, net: Network, opt: Optimizer) -> None:
        self.net, self.opt = net, opt
        self.params = net.backend.empty(net.params.shape, net.params.dtype)
        self.state: Snapshot | None = None

    def keep(self) -> None:
        ops = self.net.backend
        ops.copy_into(self.params, self.net.params)
        self.state = self.opt.snapshot(ops, into=self.state)

    def restore(self) -> None:
        ops = self.net.backend
        ops.copy_into(self.net.params, self.params)
        if self.state is not None:
            self.opt.restore(ops, self.state)


def _epoch_record(epoch: int, loss: float, lr: float, seconds: float, n: int) -> dict[str, float]:
    """The :data:`METRICS` of one epoch (``epoch`` counted from 0, recorded from 1)."""
    return {
        "epoch": epoch + 1,
        "loss": loss,
        "lr": lr,
        "seconds": seconds,
        "samples_per_second": n / seconds if seconds > 0 else math.inf,
    }


def _validation_metrics(
    net: Network, Xv: Array, Yv: Array, group: Communicator | None
) -> dict[str, float]:
    """The :data:`VALIDATION_METRICS` of the network as it is, with the rows shared across
    the ranks of a data-parallel fit."""
    if group is not None:
        metrics = evaluate_distributed(net, Xv, Yv, group)
    else:
        metrics = net.evaluate_device(Xv, Yv)
    return {"val_loss": metrics["loss"], "val_accuracy": metrics["accuracy"]}


# ---------------------------------------------------------------------- buffers kept per network
@dataclass
class EpochOrder:
    """Where the batches of an epoch come from, for steps a backend records and replays:
    ``index`` holds the order of the epoch's n samples and the 0-d ``cursor`` the position of
    the next batch in it. Each step gathers its batch at the cursor and advances it, so one
    recording serves every batch of its size."""

    index: Array
    cursor: Array
    unshuffled: bool = False  # index holds 0, 1, ..., n−1 already: nothing to copy


@dataclass
class EpochBuffers:
    """Device buffers that training keeps for a network as long as the network lives, since
    recorded steps point at them: the epoch's summed cost and, where steps are recorded, the
    epoch's order (kept while the number of samples stays the same)."""

    cost: Array
    order: EpochOrder | None = None


_epoch_buffers: weakref.WeakKeyDictionary[Network, EpochBuffers] = weakref.WeakKeyDictionary()


def epoch_buffers(net: Network) -> EpochBuffers:
    """The :class:`EpochBuffers` of ``net``, allocated at its first epoch."""
    buffers = _epoch_buffers.get(net)
    if buffers is None:
        buffers = _epoch_buffers[net] = EpochBuffers(cost=net.backend.zeros((), net.dtype))
    return buffers


def epoch_order(net: Network, n: int) -> EpochOrder:
    """The device buffers for the order of an epoch of ``n`` samples of ``net``."""
    buffers = epoch_buffers(net)
    order = buffers.order
    if order is None or order.index.shape[0] != n:
        ops = net.backend
        order = EpochOrder(index=ops.empty((n,), "int64"), cursor=ops.zeros((), "int64"))
        buffers.order = order
    return order


def run_epoch(
    net: Network,
    Xd: Array,
    Yd: Array,
    opt: Optimizer,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    comm: Communicator | None = None,
) -> Array:
    """One pass over device-resident (Xd, Yd); returns the summed cost as a device scalar.

    With a communicator, rank r of N computes the gradient of its contiguous share of each
    global batch of m rows, scaled by 1/m, and an allreduce sums the shares: every rank then
    holds the gradient averaged over the whole batch and applies the same update.

    A step (the gather of its batch, feedforward, backpropagation and, where nothing must
    come between, the update) runs through ``ops.run_step``, which may record it once and
    replay it (CUDA graphs). On such a backend a step therefore works on fixed buffers only:
    the epoch's order is copied into a buffer kept with the network (:func:`epoch_order`) and
    each step gathers its batch at a cursor kept on the device (and moves it on), the cost adds
    into a buffer that lives as long as the network (:func:`epoch_buffers`), and the key names
    everything else the recording depends on.
    """
    ops = net.backend
    n = Xd.shape[0]
    order = ops.permutation(n, seed, epoch) if shuffle else None
    recorded = ops.replays_steps
    if recorded:
        plan = epoch_order(net, n)
        if order is not None or not plan.unshuffled:
            ops.copy_into(plan.index, order if order is not None else ops.arange(n))
            plan.unshuffled = order is None
        plan.cursor[...] = 0
        # a recorded kernel holds each array's address, shape and strides as they were
        buffers = (*map(ops.address, (Xd, Yd, plan.index, plan.cursor)), Xd.shape, Yd.shape,
                   Xd.strides, Yd.strides)
    cost = epoch_buffers(net).cost
    cost[...] = 0
    for batch_start in range(0, n, batch_size):
        batch_stop = min(batch_start + batch_size, n)
        scale = opt.gradient_scale() / (batch_stop - batch_start)  # 1/m, and η where exact
        start, stop = batch_start, batch_stop
        if comm is not None:
            start, stop = shard_rows(start, stop, comm.rank, comm.size)
        rows = stop - start
        # the update joins the step unless an allreduce must come between them, or a
        # recording backend cannot record it (replay_key None)
        update_key = opt.replay_key(ops) if recorded else None
        update_in_step = comm is None and (update_key is not None or not recorded)
        if update_in_step:
            opt.count_step()
        if rows > 0:
            ws = net.workspace(rows)
            X, Y = ws.X, ws.Y
            if recorded:
                offset, advance = start - batch_start, batch_stop - batch_start
                gather = _gather_at_cursor(ops, Xd, Yd, ws, plan, offset, advance)
            elif order is not None:
                gather = _gather_rows(ops, Xd, Yd, ws, order[start:stop])
            else:
                gather, X, Y = None, Xd[start:stop], Yd[start:stop]
            step = _training_step(net, opt, gather, X, Y, ws, cost, scale, update_in_step)
            if recorded:
                key = (ws.serial, scale, update_key if update_in_step else None, offset, advance,
                       buffers)
                ops.run_step(key, step)
            else:
                step()
        else:
            net.grads[...] = 0
            if recorded:
                ops.advance_cursor(plan.cursor, batch_stop - batch_start, n)
        if not update_in_step:
            if comm is not None:
                comm.allreduce_sum(net.grads)
            opt.step(ops, net.params, net.grads, prescaled=True)
    if comm is not None:
        comm.allreduce_sum(cost)
    return cost


def _gather_rows(
    ops: Ops, Xd: Array, Yd: Array, ws: Workspace, index: Array
) -> Callable[[], None]:
    """The batch rows ``index`` of (Xd, Yd) into the workspace."""

    def gather() -> None:
        ops.gather_rows(Xd, index, out=ws.X)
        ops.gather_rows(Yd, index, out=ws.Y)

    return gather


def _gather_at_cursor(
    ops: Ops, Xd: Array, Yd: Array, ws: Workspace, plan: EpochOrder, offset: int, advance: int
) -> Callable[[], None]:
    """The batch at the device cursor of ``plan`` (this rank's share starts ``offset`` rows
    into it) into the workspace; then the cursor moves on by the whole batch, ``advance``."""
    n = plan.index.shape[0]

    def gather() -> None:
        ops.gather_batch(Xd, plan.index, plan.cursor, offset, out=ws.X)
        ops.gather_batch(Yd, plan.index, plan.cursor, offset, out=ws.Y)
        ops.advance_cursor(plan.cursor, advance, n)

    return gather


def _training_step(
    net: Network, opt: Optimizer, gather: Callable[[], None] | None, X: Array, Y: Array,
    ws: Workspace, cost: Array, scale: float, with_update: bool,
) -> Callable[[], None]:
    """One step as a closure over fixed buffers: ``gather`` the batch (when given; into X and
    Y), feedforward, add its cost to the device scalar ``cost``, backpropagate, and
    (``with_update``) update the parameters. A backend may record it once and replay it."""
    ops = net.backend

    def step() -> None:
        if gather is not None:
            gather()
        net.feedforward(X, ws)
        net.add_cost(Y, ws, cost)
        net.backprop(X, Y, ws, scale)
        if with_update:
            opt.update_prescaled(ops, net.params, net.grads)

    return step


def shard_rows(start: int, stop: int, rank: int, size: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share [lo, hi) of rows [start, stop) split over ``size``
    ranks as evenly as possible (the first ``(stop − start) mod size`` ranks get one more)."""
    count, extra = divmod(stop - start, size)
    lo = start + rank * count + min(rank, extra)
    return lo, lo + count + (1 if rank < extra else 0)


def _nbytes(*arrays: Any) -> int:
    """Bytes the arrays take (0 for what is not yet an array)."""
    return sum(int(getattr(a, "nbytes", 0)) for a in arrays)


def _progress_bar(epochs: int, enabled: bool) -> Any:
    """A tqdm bar over epochs (None when disabled; tqdm hides it when stderr is no terminal)."""
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=epochs, unit="epoch", disable=None, dynamic_ncols=True)


def _show(bar: Any, record: dict[str, float]) -> None:
    if bar is None:
        return
    shown = {"loss": f"{record['loss']:.4g}", "samples/s": f"{record['samples_per_second']:.3g}"}
    if "val_accuracy" in record:
        shown["val_acc"] = f"{record['val_accuracy']:.4f}"
    bar.set_postfix(shown, refresh=False)
    bar.update(1)
