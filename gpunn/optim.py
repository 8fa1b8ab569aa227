"""Optimizers and learning-rate schedules.

An optimizer updates the flat parameter buffer θ from the flat gradient buffer ∇C in one backend
kernel per step. Plain SGD is the article's rule θ ← θ − η ∇C; momentum, Nesterov and Adam keep
state buffers of θ's shape, allocated on the first step and saved in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from . import validation
from .backend import Array, Ops
from .errors import InputError

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")
SCHEDULES = ("constant", "step", "cosine")


class Optimizer:
    """Base class: ``lr`` is the current learning rate (a schedule may change it per epoch)."""

    name = "optimizer"
    default_lr = 0.1

    def __init__(self, lr: float | None = None, weight_decay: float = 0.0) -> None:
        self.lr = validation.check_positive_float("lr", self.default_lr if lr is None else lr)
        self.base_lr = self.lr
        self.weight_decay = validation.check_positive_float(
            "weight_decay", weight_decay, allow_zero=True
        )
        self.steps = 0

    def step(self, ops: Ops, params: Array, grads: Array) -> None:
        """Apply one update to ``params`` from ``grads`` (both flat device buffers)."""
        self.steps += 1
        self.update(ops, params, grads)

    def update(self, ops: Ops, params: Array, grads: Array) -> None:
        raise NotImplementedError

    def state_arrays(self, ops: Ops) -> dict[str, Any]:
        """State to checkpoint, as host arrays (empty before the first step)."""
        return {}

    def load_state_arrays(self, ops: Ops, arrays: dict[str, Any], dtype: Any) -> None:
        """Restore what :meth:`state_arrays` returned."""

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.base_lr, "weight_decay": self.weight_decay}


class SGD(Optimizer):
    """θ ← θ − η (∇C + λθ): the article's gradient descent step (λ: weight decay)."""

    name = "sgd"

    def update(self, ops: Ops, params: Array, grads: Array) -> None:
        ops.sgd_update(params, grads, self.lr, self.weight_decay)


class _Stateful(Optimizer):
    """An optimizer with state buffers shaped like θ, created on first use."""

    state_names: tuple[str, ...] = ()

    def __init__(self, lr: float | None = None, weight_decay: float = 0.0) -> None:
        super().__init__(lr, weight_decay)
        self.state: dict[str, Array] = {}

    def buffers(self, ops: Ops, params: Array) -> list[Array]:
        if not self.state:
            self.state = {k: ops.zeros(params.shape, params.dtype) for k in self.state_names}
        return [self.state[k] for k in self.state_names]

    def state_arrays(self, ops: Ops) -> dict[str, Any]:
        arrays = {k: ops.to_host(v) for k, v in self.state.items()}
        if self.state:
            arrays["steps"] = self.steps
        return arrays

    def load_state_arrays(self, ops: Ops, arrays: dict[str, Any], dtype: Any) -> None:
        if not arrays:
            return
        missing = [k for k in self.state_names if k not in arrays]
        if missing:
            raise InputError(f"optimizer state lacks {missing} for {self.name!r}")
        self.state = {k: ops.asarray(arrays[k], dtype=dtype) for k in self.state_names}
        self.steps = int(arrays.get("steps", 0))


class Momentum(_Stateful):
    """v ← μv + ∇C;  θ ← θ − ηv (classical momentum), or θ ← θ − η(∇C + μv) (Nesterov)."""

    name = "momentum"
    state_names = ("velocity",)

    def __init__(
        self,
        lr: float | None = None,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr, weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise InputError(f"momentum must lie in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        if self.nesterov:
            self.name = "nesterov"

    def update(self, ops: Ops, params: Array, grads: Array) -> None:
        (velocity,) = self.buffers(ops, params)
        ops.momentum_update(
            params, grads, velocity, self.lr, self.momentum, self.nesterov, self.weight_decay
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "momentum": self.momentum}


class Adam(_Stateful):
    """Adam with bias correction and decoupled weight decay (AdamW when weight_decay > 0)."""

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
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise InputError(f"{name} must lie in [0, 1), got {beta}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = validation.check_positive_float("eps", eps)

    def update(self, ops: Ops, params: Array, grads: Array) -> None:
        m, v = self.buffers(ops, params)
        ops.adam_update(
            params, grads, m, v, self.lr, self.beta1, self.beta2, self.eps, self.steps,
            self.weight_decay,
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}


def make_optimizer(
    optimizer: str | Optimizer | None = None, lr: float | None = None, **options: Any
) -> Optimizer:
    """An optimizer from a name (sgd, momentum, nesterov, adam) or an instance.

    ``lr``, when given, overrides the instance's learning rate.
    """
    if isinstance(optimizer, Optimizer):
        if lr is not None:
            optimizer.lr = optimizer.base_lr = validation.check_positive_float("lr", lr)
        return optimizer
    name = validation.check_choice("optimizer", optimizer or "sgd", OPTIMIZERS)
    if name == "sgd":
        return SGD(lr, **options)
    if name in ("momentum", "nesterov"):
        return Momentum(lr, nesterov=name == "nesterov", **options)
    return Adam(lr, **options)


def make_schedule(
    schedule: str | Callable[[int], float] | None, epochs: int, step_size: int = 10,
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """A factor per epoch (0-based) by which the base learning rate is multiplied.

    constant: 1;  step: γ^⌊epoch / step_size⌋;  cosine: ½(1 + cos(π · epoch / epochs)).
    """
    if callable(schedule):
        return schedule
    name = validation.check_choice("schedule", schedule or "constant", SCHEDULES)
    if name == "step":
        step_size = validation.check_positive_int("step_size", step_size)
        return lambda epoch: gamma ** (epoch // step_size)
    if name == "cosine":
        return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    return lambda epoch: 1.0
