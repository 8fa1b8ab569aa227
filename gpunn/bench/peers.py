"""The peers gpunn's benchmark times it against, as data: their names in the order of the
tables, and for each PyTorch peer how it is made and what it computes."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PEERS", "TORCH_PEERS", "TorchPeer"]

#: every peer gpunn can be timed against, in the order of the tables
PEERS = ("torch-eager", "torch-compile", "torch-cuda-graph", "torch-amp", "per-sample")


class TorchPeer(NamedTuple):
    """A PyTorch peer: the function of :mod:`.contenders` that makes it, whether it runs on
    the CPU too, and whether it computes in gpunn's precision (AMP's float16 does not)."""

    maker: str
    on_cpu: bool
    same_precision: bool


TORCH_PEERS: dict[str, TorchPeer] = {
    "torch-eager": TorchPeer("make_torch_eager", on_cpu=True, same_precision=True),
    "torch-compile": TorchPeer("make_torch_compile", on_cpu=True, same_precision=True),
    "torch-cuda-graph": TorchPeer("make_torch_cuda_graph", on_cpu=False, same_precision=True),
    "torch-amp": TorchPeer("make_torch_amp", on_cpu=False, same_precision=False),
}
