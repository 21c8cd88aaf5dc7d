"""Timing and peak-memory helpers: every reported figure is a ratio of runs interleaved in one process.

Variants are timed in rounds (each round runs every variant once, in a rotated order), so slow drift of a shared
machine falls on all of them alike; a ratio is taken per round and reported as its median and spread.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class Spread:
    """Median and range of repeated measurements."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_dict(self, digits: int = 4) -> dict:
        return {k: round(v, digits) if isinstance(v, float) else v for k, v in asdict(self).items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(
    variants: dict[str, Callable[[], object]], *, device: torch.device, warmup: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of each variant in each round (after ``warmup`` untimed calls of each)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> Spread:
    """Per-round ratio of two variants' times."""
    return Spread.of([a / b for a, b in zip(times[numerator], times[denominator])])


def pin_cpu_allocator() -> bool:
    """Make glibc return every large freed block to the operating system at once (a fixed mmap threshold), so that
    the resident set size follows live tensors and each CPU peak-memory figure is not hidden by memory an earlier
    run left in the heap. Call once, before any timing, so every variant runs under the same allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: the figures then depend on the order of measurement
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 1 << 17)) and bool(libc.mallopt(m_trim_threshold, 1 << 17))


def peak_memory(fn: Callable[[], object], *, device: torch.device) -> int:
    """Bytes of memory ``fn`` needs above what was held before it: CUDA's allocator peak, or on a CPU the peak
    resident set size sampled every millisecond (what the operating system had to provide; see
    :func:`pin_cpu_allocator`)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    sampler = _RssSampler()
    with sampler:
        fn()
    return sampler.peak - sampler.start


class _RssSampler:
    """Samples this process's resident set size on a background thread (torch ops release the GIL)."""

    def __init__(self, interval: float = 1e-3) -> None:
        self.interval, self.start, self.peak = interval, 0, 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
