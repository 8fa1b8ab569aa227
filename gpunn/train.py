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
from collections.abc import Callable, Iterable
from typing import Any

import numpy

from . import divergence, validation
from .errors import DivergenceError, InputError, InputTypeError
from .network import Network, Workspace
from .optim import Optimizer, make_optimizer, make_schedule


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

    def on_train_begin(self, net: Network) -> None:
        """Called once before the first epoch."""

    def on_epoch_end(self, net: Network, record: dict[str, float]) -> bool | None:
        """Called after each epoch with its metrics; True stops training."""
        return None

    def on_train_end(self, net: Network, history: History) -> None:
        """Called once after the last epoch."""


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs, and
    (with ``restore_best``) put back the weights of the best epoch."""

    def __init__(
        self,
        patience: int = 5,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        restore_best: bool = True,
    ) -> None:
        self.patience = validation.check_positive_int("patience", patience)
        self.monitor = monitor
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.best = math.inf
        self.best_params: list[Any] | None = None
        self.waited = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, net: Network, record: dict[str, float]) -> bool:
        value = record.get(self.monitor)
        if value is None:
            raise InputError(
                f"early stopping monitors {self.monitor!r}, which fit does not report; "
                f"pass validation_data or monitor one of {sorted(record)}"
            )
        if value < self.best - self.min_delta:
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
    comm: Any = None,
) -> History:
    """Train ``net`` on (X, Y) by mini-batch gradient descent; returns the per-epoch History.

    X: (n, n_in) samples; Y: integer labels (n,) or targets (n, n_out). Host arrays are copied
    to the device once; arrays already on the network's device are used as they are.
    epochs, batch_size, lr: the article's η and mini-batch size m; each step moves the
    parameters by −η times the gradient averaged over its batch (the last batch of an epoch
    may be smaller and is averaged over its own size).
    optimizer: "sgd" (default), "momentum", "nesterov", "adam" or an :class:`Optimizer`.
    shuffle, seed: each epoch's order is a permutation drawn on the device from ``seed``
    (default: the network's seed) and the epoch number; ``shuffle=False`` keeps the order.
    schedule: "step", "cosine" or a function epoch → factor of the learning rate.
    initial_epoch, total_epochs: resume at that epoch (the order and schedule continue as if
    the run had not stopped); total_epochs is the length the schedule plans for.
    comm: a communicator from :func:`gpunn.distributed.connect` for data-parallel training:
    every rank holds all of (X, Y) and the same network, takes its share of each mini-batch,
    and the gradients are summed across ranks before every update (see :func:`run_epoch`).

    Divergence: after each epoch, fit raises :class:`~gpunn.errors.DivergenceError` when the
    epoch's summed cost or a weight is NaN or infinite, or when the weights the epoch ends
    with give an infinite cost on (X, Y) (see :mod:`gpunn.divergence`). The network then keeps
    the weights, and the optimizer its state, from the start of that epoch.
    """
    epochs = validation.check_positive_int("epochs", epochs)
    batch_size = validation.check_positive_int("batch_size", batch_size)
    initial_epoch = validation.check_positive_int("initial_epoch", initial_epoch, minimum=0)
    shuffle = validation.check_bool("shuffle", shuffle)
    progress = validation.check_bool("progress", progress)
    seed = net.seed if seed is None else validation.check_positive_int("seed", seed, minimum=0)
    if total_epochs is not None:
        total_epochs = validation.check_positive_int("total_epochs", total_epochs)
    opt = make_optimizer(optimizer, lr)
    plan = total_epochs if total_epochs is not None else initial_epoch + epochs
    lr_factor = make_schedule(schedule, plan)
    hooks = [_as_callback(c) for c in callbacks]
    distributed = comm is not None and comm.size > 1

    ops = net.backend
    opt.move_state(ops, net.dtype)  # an optimizer that trained a network elsewhere
    with ops.memory_guard("copying the training data to the device", batch_size, _nbytes(X, Y)):
        Xd = net.device_inputs(X)
        Yd = net.device_targets(Y, Xd.shape[0])
        val = None
        if validation_data is not None:
            Xv, Yv = validation.check_validation_data(validation_data)
            Xv = net.device_inputs(Xv, "validation X")
            val = (Xv, net.device_targets(Yv, Xv.shape[0], "validation Y"))
    if distributed:
        from .distributed import evaluate_distributed, verify_replicas

        verify_replicas(comm, net, Xd.shape[0], batch_size, seed)
        progress = progress and comm.is_root

    history = History()
    # the start of the epoch, kept to go back to if it diverges: one device copy per epoch
    # into buffers allocated once (the optimizer's, once its state exists)
    last_good = ops.empty(net.params.shape, net.params.dtype)
    last_good_state = None
    data_max = divergence.data_magnitudes(ops, Xd, Yd)
    for hook in hooks:
        hook.on_train_begin(net)
    # a diverging run is reported once, as DivergenceError, not as NumPy overflow warnings
    quiet_fp = numpy.errstate(over="ignore", invalid="ignore", divide="ignore")
    # the device running out of memory anywhere in training is reported with the batch size
    oom = ops.memory_guard("training", batch_size,
                           Workspace.nbytes(net.sizes, batch_size, net.dtype))
    with oom, ops.training_scope(batch_size), quiet_fp, _progress_bar(epochs, progress) as bar:
        for epoch in range(initial_epoch, initial_epoch + epochs):
            factor = lr_factor(epoch)  # a user's function may return anything
            opt.lr = opt.base_lr * validation.check_positive_float(
                f"the schedule's learning-rate factor for epoch {epoch}", factor, allow_zero=True)
            ops.copy_into(last_good, net.params)
            last_good_state = opt.snapshot(ops, into=last_good_state)
            started = time.perf_counter()
            cost = run_epoch(net, Xd, Yd, opt, batch_size, shuffle, seed, epoch, comm)
            ops.synchronize()
            seconds = time.perf_counter() - started
            loss_sum, params_finite, magnitudes = divergence.read_back(ops, cost, net, data_max)
            if not (math.isfinite(loss_sum) and params_finite):
                problem = "the loss or the weights became NaN or infinite"
            elif divergence.cost_overflows(net, Xd, Yd, magnitudes, comm if distributed else None):
                problem = (
                    "the weights grew so large that the network's outputs overflow "
                    f"{numpy.dtype(net.dtype).name}: its cost on the training data is infinite"
                )
            else:
                problem = None
            if problem is not None:
                ops.copy_into(net.params, last_good)
                opt.restore(ops, last_good_state)
                raise DivergenceError(
                    f"training diverged in epoch {epoch + 1}: {problem} (learning rate "
                    f"{opt.lr:g}). Try a lower learning rate; the network keeps the weights, "
                    "and the optimizer its state, from the start of that epoch"
                )
            n = Xd.shape[0]
            record = {
                "epoch": epoch + 1,
                "loss": loss_sum / n,
                "lr": opt.lr,
                "seconds": seconds,
                "samples_per_second": n / seconds if seconds > 0 else math.inf,
            }
            if val is not None:
                if distributed:
                    metrics = evaluate_distributed(net, *val, comm)
                else:
                    metrics = net.evaluate_device(*val)
                record["val_loss"], record["val_accuracy"] = metrics["loss"], metrics["accuracy"]
            history.append(record)
            _show(bar, record)
            stop = [hook.on_epoch_end(net, record) for hook in hooks]
            if any(stop):
                break
    for hook in hooks:
        hook.on_train_end(net, history)
    net.optimizer = opt
    return history


def run_epoch(
    net: Network,
    Xd: Any,
    Yd: Any,
    opt: Optimizer,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    comm: Any = None,
) -> Any:
    """One pass over device-resident (Xd, Yd); returns the summed cost as a device scalar.

    With a communicator, rank r of N computes the gradient of its contiguous share of each
    global batch of m rows, scaled by 1/m, and an allreduce sums the shares: every rank then
    holds the gradient averaged over the whole batch and applies the same update.

    A step (the gather of its batch, feedforward, backpropagation and, where nothing must
    come between, the update) runs through ``ops.run_step``, which may record it once and
    replay it (CUDA graphs). On such a backend a step therefore works on fixed buffers only:
    the epoch's order is copied into a buffer of the network and each step gathers its batch
    at a cursor kept on the device (and moves it on), the cost adds into a buffer that lives
    as long as the network, and the key names everything else the recording depends on.
    """
    ops = net.backend
    n = Xd.shape[0]
    order = ops.permutation(n, seed, epoch) if shuffle else None
    recorded = ops.replays_steps
    if recorded:
        plan = net.epoch_order(n)
        if order is not None or not plan.unshuffled:
            ops.copy_into(plan.index, order if order is not None else ops.xp.arange(n))
            plan.unshuffled = order is None
        plan.cursor[...] = 0
        # a recorded kernel holds each array's address, shape and strides as they were
        buffers = (*map(ops.address, (Xd, Yd, plan.index, plan.cursor)), Xd.shape, Yd.shape,
                   Xd.strides, Yd.strides)
    cost = net.epoch_cost
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
            step = _training_step(net, opt, gather, X, Y, ws, scale, update_in_step)
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


def _gather_rows(ops: Any, Xd: Any, Yd: Any, ws: Any, index: Any) -> Callable[[], None]:
    """The batch rows ``index`` of (Xd, Yd) into the workspace."""

    def gather() -> None:
        ops.gather_rows(Xd, index, out=ws.X)
        ops.gather_rows(Yd, index, out=ws.Y)

    return gather


def _gather_at_cursor(
    ops: Any, Xd: Any, Yd: Any, ws: Any, plan: Any, offset: int, advance: int
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
    net: Network, opt: Optimizer, gather: Callable[[], None] | None, X: Any, Y: Any, ws: Any,
    scale: float, with_update: bool,
) -> Callable[[], None]:
    """One step as a closure over fixed buffers: ``gather`` the batch (when given; into X and
    Y), feedforward, add its cost to ``net.epoch_cost``, backpropagate, and (``with_update``)
    update the parameters. A backend may record it once and replay it."""
    ops = net.backend

    def step() -> None:
        if gather is not None:
            gather()
        net.feedforward(X, ws)
        net.add_cost(Y, ws, net.epoch_cost)
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


def _as_callback(callback: Any) -> Callback:
    if isinstance(callback, Callback):
        return callback
    if callable(callback):
        return _LambdaCallback(callback)
    raise InputTypeError(
        f"callbacks must hold gpunn.Callback objects or functions (net, record) -> bool, "
        f"got {callback!r}"
    )


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
