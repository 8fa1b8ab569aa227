"""The benchmark configurations (``docs/design.md``, "Benchmarks"), as data, and their FLOP
counts.

FLOPs per training sample (one full SGD step's share), with W_l = n_l * n_{l-1} the number
of weights of layer l:

    forward                 2 * sum_l W_l          (Z = A_prev @ W.T: one multiply-add each)
    weight gradients        2 * sum_l W_l          (dW = delta.T @ A_prev)
    input gradients         2 * sum_{l>=2} W_l     (delta_prev = delta @ W; layer 1 needs none)

Bias, activation and update work is O(sum n_l) and is not counted.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import InputError


def weight_counts(layers: Sequence[int]) -> list[int]:
    """Number of weights n_l * n_{l-1} of each layer l = 1..L."""
    if len(layers) < 2:
        raise InputError(f"layers needs at least an input and an output size, got {list(layers)}")
    return [int(n_out) * int(n_in) for n_in, n_out in itertools.pairwise(layers)]


def flops_per_sample(layers: Sequence[int]) -> int:
    """FLOPs of one sample's share of a training step: 4*sum(W) + 2*sum(W over layers 2..L)."""
    w = weight_counts(layers)
    return 2 * sum(w) + 2 * sum(w) + 2 * sum(w[1:])


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration: a model, its SGD learning rate and its own batch size."""

    name: str
    layers: tuple[int, ...]
    activation: str
    output: str
    loss: str
    lr: float
    batch: int
    gpu_only: bool = False
    #: weight initialisation passed to gpunn.Network (every contender copies these weights)
    init: str = "normal"
    #: configurations with the same model share a family (they differ only in batch size)
    family: str = field(default="")

    @property
    def weights(self) -> int:
        """Total number of weights (biases excluded)."""
        return sum(weight_counts(self.layers))

    @property
    def flops_per_sample(self) -> int:
        """FLOPs per training sample, as the module docstring counts them."""
        return flops_per_sample(self.layers)

    @property
    def model_key(self) -> tuple:
        """What identifies the model (everything but the batch size)."""
        return (self.layers, self.activation, self.output, self.loss, self.lr, self.init)

    def with_batch(self, batch: int) -> BenchConfig:
        """This model at another batch size, named after a configuration when one matches."""
        if batch == self.batch:
            return self
        for cfg in CONFIGS.values():
            if cfg.model_key == self.model_key and cfg.batch == batch:
                return cfg
        return BenchConfig(f"{self.family}-b{batch}", self.layers, self.activation, self.output,
                           self.loss, self.lr, int(batch), False, self.init, self.family)

    def as_dict(self) -> dict:
        """JSON-ready description, FLOPs included."""
        return {"name": self.name, "layers": list(self.layers), "activation": self.activation,
                "output": self.output, "loss": self.loss, "lr": self.lr, "batch": self.batch,
                "gpu_only": self.gpu_only, "init": self.init, "family": self.family,
                "flops_per_sample": self.flops_per_sample}


# The seed keeps the article's small random weights; the ReLU models use He initialisation so
# that 2048-wide layers neither overflow nor die during a long benchmark (every contender
# starts from the same weights either way).
_SEED = dict(layers=(784, 30, 10), activation="sigmoid", output="sigmoid", loss="mse", lr=3.0,
             family="seed")
_MLP = dict(layers=(784, 256, 256, 10), activation="relu", output="softmax",
            loss="cross_entropy", lr=0.1, init="he", family="mlp")
_WIDE = dict(layers=(2048, 2048, 2048, 2048, 10), activation="relu", output="softmax",
             loss="cross_entropy", lr=0.1, init="he", family="wide")

#: name -> configuration, in the order of the table in docs/design.md
CONFIGS: dict[str, BenchConfig] = {
    c.name: c
    for c in (
        BenchConfig(name="seed", batch=10, **_SEED),
        BenchConfig(name="mlp-b32", batch=32, **_MLP),
        BenchConfig(name="mlp-b128", batch=128, **_MLP),
        BenchConfig(name="mlp-b1024", batch=1024, **_MLP),
        BenchConfig(name="wide-b1024", batch=1024, **_WIDE),
        BenchConfig(name="mlp-b8192", batch=8192, gpu_only=True, **_MLP),
        BenchConfig(name="wide-b8192", batch=8192, gpu_only=True, **_WIDE),
    )
}


def get_configs(names: Iterable[str] | str | None = None) -> list[BenchConfig]:
    """The configurations named (a list or a comma-separated string); all when None.

    A family name ("seed", "mlp", "wide") selects every configuration of that family.
    """
    if names is None:
        return list(CONFIGS.values())
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: list[BenchConfig] = []
    for raw in names:
        name = raw.strip()
        if name in CONFIGS:
            picked = [CONFIGS[name]]
        else:
            picked = [c for c in CONFIGS.values() if c.family == name]
        if not picked:
            families = sorted({c.family for c in CONFIGS.values()})
            known = ", ".join(dict.fromkeys([*CONFIGS, *families]))  # "seed" is both
            raise InputError(f"unknown benchmark configuration {name!r}; known: {known}")
        out.extend(c for c in picked if c not in out)
    return out
