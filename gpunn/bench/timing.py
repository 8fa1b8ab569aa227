"""Timing done right: warm-up excluded, device synchronised before a clock is read, repeats,
median and spread.

A *timer* brackets one timed region: ``start()`` waits for the device to be idle and then
starts the clock; ``stop()`` waits for the device to finish everything queued since and
returns the elapsed seconds. :class:`HostTimer` uses a host clock around a ``sync`` callable;
:class:`CudaEventTimer` uses CUDA events recorded on the stream the work runs on.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import InputError


def _noop() -> None:
    return None


class Timer(Protocol):
    """Brackets one timed region (see module docstring); ``sync()`` waits for the device."""

    kind: str
    sync: Callable[[], Any]

    def start(self) -> None: ...

    def stop(self) -> float: ...


class HostTimer:
    """Host clock read only after ``sync()`` has waited for the device."""

    kind = "host"

    def __init__(self, sync: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.sync = sync or _noop
        self.clock = clock
        self._t0: float | None = None

    def start(self) -> None:
        self.sync()
        self._t0 = self.clock()

    def stop(self) -> float:
        if self._t0 is None:
            raise RuntimeError("HostTimer.stop() called before start()")
        self.sync()
        elapsed = self.clock() - self._t0
        self._t0 = None
        return elapsed


class CudaEventTimer:
    """CUDA events around the region, with a host-clock cross-check.

    ``make_event()`` returns an object with ``record(stream)`` / ``record()``; ``elapsed(a, b)``
    returns milliseconds between two recorded events. If the event interval is much shorter
    than the synchronised host interval, the work ran on another stream than the one the
    events were recorded on, and the host interval (which is still correct, only coarser) is
    returned.
    """

    kind = "cuda-event"

    def __init__(self, make_event: Callable[[], Any], elapsed_ms: Callable[[Any, Any], float],
                 sync: Callable[[], Any], stream: Any = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.make_event = make_event
        self.elapsed_ms = elapsed_ms
        self.sync = sync
        self.stream = stream
        self.clock = clock
        self._events: tuple[Any, Any] | None = None
        self._t0 = 0.0

    def _record(self, ev: Any) -> None:
        if self.stream is None:
            ev.record()
        else:
            ev.record(self.stream)

    def start(self) -> None:
        a, b = self.make_event(), self.make_event()
        self.sync()
        self._t0 = self.clock()
        self._record(a)
        self._events = (a, b)

    def stop(self) -> float:
        if self._events is None:
            raise RuntimeError("CudaEventTimer.stop() called before start()")
        a, b = self._events
        self._record(b)
        self.sync()
        host = self.clock() - self._t0
        b.synchronize()
        gpu = self.elapsed_ms(a, b) / 1e3
        self._events = None
        return host if gpu < 0.5 * host else gpu


@dataclass
class Measurement:
    """Seconds per repeat of ``steps`` training steps of ``batch`` samples each."""

    times: list[float]
    steps: int
    batch: int
    timer: str = "host"
    warmup: int = 0

    @property
    def samples(self) -> int:
        return self.steps * self.batch

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def quartiles(self) -> tuple[float, float]:
        """First and third quartiles of the repeat times (inclusive method)."""
        if len(self.times) < 2:
            return self.times[0], self.times[0]
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[0], q[2]

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeat times: 0.05 means the repeats lie within 5%."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        """Median throughput (samples / median time)."""
        return self.samples / self.median

    @property
    def samples_per_s_range(self) -> tuple[float, float]:
        """Throughput of the slowest and of the fastest repeat."""
        return self.samples / self.max, self.samples / self.min

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.median / self.steps

    def as_dict(self) -> dict:
        lo, hi = self.samples_per_s_range
        q1, q3 = self.quartiles
        return {
            "steps": self.steps, "batch": self.batch, "repeats": len(self.times),
            "warmup": self.warmup, "timer": self.timer,
            "times_s": list(self.times), "median_s": self.median,
            "q1_s": q1, "q3_s": q3,
            "samples_per_s": self.samples_per_s,
            "samples_per_s_min": lo, "samples_per_s_max": hi,
            "ms_per_step": self.ms_per_step,
            "ms_per_step_min": 1e3 * self.min / self.steps,
            "ms_per_step_max": 1e3 * self.max / self.steps,
            "spread": self.spread,
        }


def measure(fn: Callable[[], Any], *, steps: int, batch: int, timer: Timer | None = None,
            warmup: int = 1, repeats: int = 5) -> Measurement:
    """Time ``fn`` (which runs ``steps`` steps of ``batch`` samples) ``repeats`` times, after
    ``warmup`` untimed calls (compilation, first allocation, graph capture)."""
    return measure_interleaved([fn], [timer or HostTimer()], steps=steps, batch=batch,
                               warmup=warmup, repeats=repeats)[0]


def measure_interleaved(fns: Sequence[Callable[[], Any]], timers: Sequence[Timer], *,
                        steps: int, batch: int, warmup: int = 1,
                        repeats: int = 5) -> list[Measurement]:
    """Time several contenders doing the same work (each ``fn`` runs ``steps`` steps of
    ``batch`` samples, timed by its timer): ``warmup`` untimed calls each, then ``repeats``
    timed rounds in which every contender runs once, in turn.

    Round-robin order spreads slow drifts (clock boost, thermal, other load) over all
    contenders instead of penalising whichever runs last.
    """
    if len(fns) != len(timers):
        raise InputError(f"one timer per contender is needed: {len(fns)} contenders, "
                         f"{len(timers)} timers")
    if repeats < 1:
        raise InputError(f"repeats must be at least 1, got {repeats}")
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, (fn, timer) in enumerate(zip(fns, timers, strict=True)):
            timer.start()
            fn()
            times[i].append(timer.stop())
    return [Measurement(t, steps, batch, tm.kind, warmup)
            for t, tm in zip(times, timers, strict=True)]
