"""Optimizers and learning-rate schedules.

An optimizer updates the flat parameter buffer θ from the flat gradient buffer ∇C in one backend
kernel per step. Plain SGD is the article's rule θ ← θ − η ∇C; momentum, Nesterov and Adam keep
state buffers of θ's shape, allocated on the first step and saved in checkpoints together with
the step counter, so that a resumed run continues exactly where it stopped. A kernel may use the
gradient buffer as scratch space (weight decay is added into it in place).

A schedule is a factor per epoch (0-based) by which the optimizer's base learning rate is
multiplied; :func:`gpunn.train.fit` applies it before each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy

from . import validation
from .backend import Array, Ops, backend_of
from .errors import InputError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
SCHEDULES = ("constant", "step", "cosine")

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "Adam",
    "ConstantSchedule",
    "CosineSchedule",
    "Momentum",
    "Nesterov",
    "Optimizer",
    "Schedule",
    "Snapshot",
    "StepSchedule",
    "make_optimizer",
    "make_schedule",
    "optimizer_from_config",
    "schedule_from_config",
]


@dataclass
class Snapshot:
    """An optimizer's state at one moment, on the device: the step count and copies of its
    state buffers (none for SGD, or before the first step). See :meth:`Optimizer.snapshot`."""

    steps: int
    buffers: dict[str, Array] = field(default_factory=dict)


class Optimizer:
    """Base class: ``lr`` is the current learning rate (a schedule may change it per epoch),
    ``base_lr`` the one it was created with, ``steps`` the number of updates applied so far."""

    name = "optimizer"
    default_lr = 0.1

    def __init__(self, lr: float | None = None, weight_decay: float = 0.0) -> None:
        self.lr = validation.check_float(
            "lr", self.default_lr if lr is None else lr, minimum=0.0, inclusive=False
        )
        self.base_lr = self.lr
        self.weight_decay = validation.check_float(
            "weight_decay", weight_decay, minimum=0.0, inclusive=True
        )
        self.steps = 0

    def gradient_scale(self) -> float:
        """A factor the training loop may fold into δ^(L), and so into every gradient, before
        calling ``step(..., prescaled=True)``: 1 here, the learning rate for plain SGD."""
        return 1.0

    def count_step(self) -> None:
        """Count one more update (``steps`` is then t for it); :meth:`step` does it itself,
        a caller that runs :meth:`update_prescaled` inside a recorded step does it first."""
        self.steps += 1

    def step(self, ops: Ops, params: Array, grads: Array, prescaled: bool = False) -> None:
        """Apply one update to ``params`` from ``grads`` (both flat device buffers); with
        ``prescaled``, ``grads`` already carry the factor :meth:`gradient_scale`."""
        self.count_step()
        if prescaled:
            self.update_prescaled(ops, params, grads)
        else:
            self.update(ops, params, grads)

    def update(self, ops: Ops, params: Array, grads: Array) -> None:
        raise NotImplementedError

    def update_prescaled(self, ops: Ops, params: Array, grads: Array) -> None:
        """The update from gradients multiplied by :meth:`gradient_scale` (1: the same)."""
        self.update(ops, params, grads)

    def replay_key(self, ops: Ops) -> Any:
        """What :meth:`update_prescaled` reads besides θ and ∇C, as a hashable value, when a
        recorded step (a CUDA graph) may contain the update; None when it may not: an update
        that creates the optimizer's state (a recording would allocate and zero it on every
        replay, and the optimizer would never hold it), or one that depends on host values
        that change every step."""
        return None

    def move_state(self, ops: Ops, dtype: Any) -> None:
        """Put the state on ``ops``' device in ``dtype``, where an optimizer carried over from
        a network on another backend or in another dtype holds it elsewhere (nothing to move
        here)."""

    def state_arrays(self, ops: Ops) -> dict[str, Any]:
        """State to checkpoint, as host arrays (empty before the first step)."""
        return {"steps": numpy.asarray(self.steps, dtype=numpy.int64)} if self.steps else {}

    def load_state_arrays(self, ops: Ops, arrays: Mapping[str, Any], dtype: Any) -> None:
        """Restore what :meth:`state_arrays` returned (on any backend, in ``dtype``)."""
        self.steps = _read_steps(arrays)

    def snapshot(self, ops: Ops, into: Snapshot | None = None) -> Snapshot:
        """The state as it is now, for :meth:`restore`: the step count and device copies of
        the state buffers. ``into``, an earlier snapshot, lends its buffers where they fit, so
        that taking one every epoch allocates only once (the copies are device to device)."""
        return Snapshot(self.steps)

    def restore(self, ops: Ops, snapshot: Snapshot) -> None:
        """Put back the state that :meth:`snapshot` took (after a diverged epoch)."""
        self.steps = snapshot.steps

    def config(self) -> dict[str, Any]:
        """The settings that rebuild this optimizer with :func:`optimizer_from_config`."""
        return {"name": self.name, "lr": self.base_lr, "weight_decay": self.weight_decay}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({settings}, steps={self.steps})"


def _read_steps(arrays: Mapping[str, Any]) -> int:
    if "steps" not in arrays:
        return 0
    steps = numpy.asarray(arrays["steps"])
    if steps.shape != () or steps.dtype.kind not in "iu" or int(steps) < 0:
        raise InputError(f"optimizer state 'steps' must be a non-negative integer, got {steps!r}")
    return int(steps)


class SGD(Optimizer):
    """θ ← θ − η (∇C + λθ): the article's gradient descent step (λ: weight decay)."""

    name = "sgd"

    def update(self, ops: Ops, params: Array, grads: Array) -> None:
        ops.sgd_update(params, grads, self.lr, self.weight_decay)

    def gradient_scale(self) -> float:
        """η: with the learning rate folded into δ^(L), backprop yields η∇C directly and the
        update is θ ← θ − (η∇C + ηλθ), one pass over the parameters fewer."""
        return self.lr

    def update_prescaled(self, ops: Ops, params: Array, grads: Array) -> None:
        ops.sgd_update(params, grads, 1.0, self.lr * self.weight_decay)

    def replay_key(self, ops: Ops) -> Any:
        return ("sgd", self.lr * self.weight_decay)


class _Stateful(Optimizer):
    """An optimizer with state buffers shaped like θ, created (zero) on first use."""

    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float | None = None, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.state: dict[str, Array] = {}

    def buffers(self, ops: Ops, params: Array) -> list[Array]:
        if not self.state:
            self.state = {k: ops.zeros(params.shape, params.dtype) for k in self.state_names}
        for key, buffer in self.state.items():
            if buffer.shape != params.shape:
                raise InputError(
                    f"{self.name} state {key!r} has shape {tuple(buffer.shape)} but the network "
                    f"has {params.shape[0]} parameters: the state belongs to another network"
                )
        return [self.state[k] for k in self.state_names]

    def move_state(self, ops: Ops, dtype: Any) -> None:
        """As a checkpoint would: saved from the backend that holds the state, loaded here."""
        held = next(iter(self.state.values()), None)
        if held is not None and (not ops.is_device_array(held) or held.dtype != dtype):
            self.load_state_arrays(ops, self.state_arrays(backend_of(held)), dtype)

    def state_arrays(self, ops: Ops) -> dict[str, Any]:
        arrays = super().state_arrays(ops)
        arrays.update({k: ops.to_host(v) for k, v in self.state.items()})
        return arrays

    def load_state_arrays(self, ops: Ops, arrays: Mapping[str, Any], dtype: Any) -> None:
        present = [k for k in self.state_names if k in arrays]
        if not present:  # saved before the first step: nothing to restore
            self.state, self.steps = {}, _read_steps(arrays)
            return
        missing = [k for k in self.state_names if k not in arrays]
        if missing:
            raise InputError(f"optimizer state lacks {missing} for {self.name!r}")
        state = {}
        for key in self.state_names:
            array = numpy.asarray(arrays[key])
            if array.ndim != 1 or array.dtype.kind != "f" or not numpy.isfinite(array).all():
                raise InputError(
                    f"{self.name} state {key!r} must be a 1-D array of finite floats, got "
                    f"{array.dtype} of shape {array.shape}"
                )
            state[key] = ops.asarray(array, dtype=dtype)
        self.state, self.steps = state, _read_steps(arrays)

    def snapshot(self, ops: Ops, into: Snapshot | None = None) -> Snapshot:
        kept = into.buffers if into is not None else {}
        buffers = {}
        for key, buffer in self.state.items():
            copy = kept.get(key)
            if copy is None or copy.shape != buffer.shape or copy.dtype != buffer.dtype:
                copy = ops.empty(buffer.shape, buffer.dtype)
            buffers[key] = ops.copy_into(copy, buffer)
        return Snapshot(self.steps, buffers)

    def restore(self, ops: Ops, snapshot: Snapshot) -> None:
        """Copy the kept buffers back into the live ones, which keep their addresses (a
        recorded update goes on writing to them); with none kept, drop the state, which the
        next update creates anew as zeros."""
        super().restore(ops, snapshot)
        if not snapshot.buffers:
            self.state = {}
            return
        for key, copy in snapshot.buffers.items():
            ops.copy_into(self.state[key], copy)


class Momentum(_Stateful):
    """Classical momentum: v ← μv + g;  θ ← θ − ηv,  with g = ∇C + λθ."""

    name = "momentum"
    nesterov = False  # θ ← θ − η(g + μv) instead (:class:`Nesterov`)
    state_names = ("velocity",)

    def __init__(
        self, lr: float | None = None, momentum: float = 0.9, weight_decay: float = 0.0
    ) -> None:
        super().__init__(lr, weight_decay)
        self.momentum = validation.check_fraction("momentum", momentum)

    def update(self, ops: Ops, params: Array, grads: Array) -> None:
        (velocity,) = self.buffers(ops, params)
        ops.momentum_update(
            params, grads, velocity, self.lr, self.momentum, self.nesterov, self.weight_decay
        )

    def replay_key(self, ops: Ops) -> Any:
        velocity = self.state.get("velocity")
        if velocity is None:
            return None  # the first update creates the velocity: run it as it comes
        where = ops.address(velocity)
        return ("momentum", self.lr, self.momentum, self.nesterov, self.weight_decay, where)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "momentum": self.momentum}


class Nesterov(Momentum):
    """Nesterov momentum: v ← μv + g;  θ ← θ − η(g + μv),  with g = ∇C + λθ."""

    name = "nesterov"
    nesterov = True


class Adam(_Stateful):
    """Adam with bias correction and decoupled weight decay (AdamW when weight_decay > 0):

    m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  θ ← θ(1 − ηλ) − η m̂ / (√v̂ + ε),
    m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ),  t the step counter (1 at the first step).
    """

    name = "adam"
    default_lr = 0.001
    state_names = ("m", "v")

    def __init__(
        self,
        lr: float | None = None,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr, weight_decay)
        self.beta1 = validation.check_fraction("beta1", beta1)
        self.beta2 = validation.check_fraction("beta2", beta2)
        self.eps = validation.check_float("eps", eps, minimum=0.0, inclusive=False)
        self._counter: Array | None = None

    def update(self, ops: Ops, params: Array, grads: Array) -> None:
        m, v = self.buffers(ops, params)
        ops.adam_update(
            params, grads, m, v, self.lr, self.beta1, self.beta2, self.eps,
            self.step_counter(ops), self.weight_decay,
        )

    def step_counter(self, ops: Ops) -> Array:
        """t − 1 as a 0-d device integer that each update advances, so that an update
        recorded once (a CUDA graph) still applies the bias correction of its own step.
        ``steps`` (on the host, advanced by the caller before the update) stays equal to it."""
        counter = self._counter
        if counter is None or not ops.is_device_array(counter):
            counter = self._counter = ops.asarray(numpy.int64(self.steps - 1))
        return counter

    def load_state_arrays(self, ops: Ops, arrays: Mapping[str, Any], dtype: Any) -> None:
        super().load_state_arrays(ops, arrays, dtype)
        self._counter = None  # rebuilt from the restored step count

    def restore(self, ops: Ops, snapshot: Snapshot) -> None:
        super().restore(ops, snapshot)
        if not self.state:
            self._counter = None  # rebuilt at the first update
        elif self._counter is not None:
            # between updates the counter holds t of the last one: the step count
            self._counter.fill(self.steps)

    def replay_key(self, ops: Ops) -> Any:
        if not self.state or self._counter is None:
            # the first update (of a run, or after the state was loaded) creates the state or
            # the step counter, from the step count it is given: run it as it comes
            return None
        buffers = (self.state["m"], self.state["v"], self._counter)
        settings = (self.lr, self.beta1, self.beta2, self.eps, self.weight_decay)
        return ("adam", *settings, *(ops.address(b) for b in buffers))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


_CLASSES: dict[str, type[Optimizer]] = {
    "sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adam": Adam
}
_OPTIONS = {
    "sgd": ("weight_decay",),
    "momentum": ("momentum", "weight_decay"),
    "nesterov": ("momentum", "weight_decay"),
    "adam": ("beta1", "beta2", "eps", "weight_decay"),
}


def make_optimizer(
    optimizer: str | Optimizer | None = None, lr: float | None = None, **options: Any
) -> Optimizer:
    """An optimizer from a name (sgd, momentum, nesterov, adam) or an instance.

    ``lr`` and ``options`` (momentum; beta1, beta2, eps; weight_decay for all) are the named
    optimizer's settings. An instance comes with its own: it is returned as it is, and giving
    settings with it is refused rather than letting one of the two learning rates win.
    """
    if isinstance(optimizer, Optimizer):
        given = (["lr"] if lr is not None else []) + sorted(options)
        if given:
            raise InputError(
                f"{', '.join(given)} cannot be given together with an optimizer instance "
                f"({optimizer!r}), which has its own; set them when creating it, e.g. "
                f"{type(optimizer).__name__}(lr=...), or pass the optimizer's name instead"
            )
        return optimizer
    name = validation.check_choice("optimizer", optimizer or "sgd", OPTIMIZERS)
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise InputError(
            f"optimizer {name!r} has no setting {', '.join(map(repr, unknown))}; its settings "
            f"are {', '.join(map(repr, _OPTIONS[name]))}"
        )
    return _CLASSES[name](lr, **options)


def optimizer_from_config(config: Mapping[str, Any]) -> Optimizer:
    """The optimizer that :meth:`Optimizer.config` describes (without its state)."""
    settings = dict(config)
    name = settings.pop("name", None)
    if name is None:
        raise InputError("optimizer config has no 'name'")
    return make_optimizer(name, settings.pop("lr", None), **settings)


# ---------------------------------------------------------------------- learning-rate schedules
class Schedule:
    """A learning-rate factor per epoch (0-based); ``config()`` describes it for model files."""

    name = "schedule"

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({settings})"


class ConstantSchedule(Schedule):
    """factor = 1: the article's fixed learning rate."""

    name = "constant"

    def __call__(self, epoch: int) -> float:
        return 1.0


class StepSchedule(Schedule):
    """factor = γ^⌊epoch / step_size⌋: the rate drops by γ every ``step_size`` epochs."""

    name = "step"

    def __init__(self, step_size: int = 10, gamma: float = 0.1) -> None:
        self.step_size = validation.check_int("step_size", step_size, minimum=1)
        self.gamma = validation.check_float("gamma", gamma, minimum=0.0, inclusive=False)

    def __call__(self, epoch: int) -> float:
        drops = int(epoch) // self.step_size
        try:
            return self.gamma**drops
        except OverflowError:
            raise InputError(
                f"the step schedule's learning-rate factor for epoch {epoch}, gamma^{drops} = "
                f"{self.gamma:g}^{drops}, overflows the range of floats; a gamma above 1 raises "
                "the rate at every step: use a gamma below 1, a larger step_size or fewer epochs"
            ) from None

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "step_size": self.step_size, "gamma": self.gamma}


class CosineSchedule(Schedule):
    """factor = ½(1 + cos(π · epoch / epochs)) over a plan of ``epochs`` epochs.

    It falls from 1 at epoch 0 towards 0; epochs past the plan keep the last planned factor
    (training longer than planned does not make the rate climb again).
    """

    name = "cosine"

    def __init__(self, epochs: int) -> None:
        self.epochs = validation.check_int("epochs", epochs, minimum=1)

    def __call__(self, epoch: int) -> float:
        epoch = min(int(epoch), self.epochs - 1)
        return 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "epochs": self.epochs}


def make_schedule(
    schedule: str | Callable[[int], float] | None,
    epochs: int,
    step_size: int = 10,
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """A factor per epoch (0-based) by which the base learning rate is multiplied.

    constant: 1;  step: γ^⌊epoch / step_size⌋;  cosine: ½(1 + cos(π · epoch / epochs)), with
    ``epochs`` the length of the plan. A callable (such as a :class:`Schedule`) is returned as is.
    """
    if callable(schedule):
        return schedule
    name = validation.check_choice("schedule", schedule or "constant", SCHEDULES)
    if name == "step":
        return StepSchedule(step_size, gamma)
    if name == "cosine":
        return CosineSchedule(max(int(epochs), 1))
    return ConstantSchedule()


def schedule_from_config(config: Mapping[str, Any]) -> Schedule:
    """The schedule that :meth:`Schedule.config` describes."""
    settings = dict(config)
    name = validation.check_choice("schedule", settings.pop("name", "constant"), SCHEDULES)
    try:
        if name == "step":
            return StepSchedule(**settings)
        if name == "cosine":
            return CosineSchedule(**settings)
        return ConstantSchedule(**settings)
    except TypeError as exc:
        raise InputError(f"schedule {name!r} has unexpected settings {settings}: {exc}") from None
