"""Latency histograms and summary statistics for the load generator.

Owns: a compact log-linear histogram (8 significant bits, relative error < 0.4 %) that a
worker fills from run-length latency samples and ships to the parent as a plain dict,
merging, percentiles, and ``median``.

Invariants: values are non-negative integers in nanoseconds (negatives clamp to 0); a
bucket key is the smallest value that maps to it, so percentiles never over-report by
more than one bucket width; ``percentiles`` is monotone in p (p50 <= p95 <= p99 <= max).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping

_SIG_BITS = 8
_LINEAR = 1 << _SIG_BITS


def bucket(v: int) -> int:
    """Round ``v`` down to its bucket's lower bound (exact below 256)."""
    if v < _LINEAR:
        return v if v > 0 else 0
    shift = v.bit_length() - _SIG_BITS
    return (v >> shift) << shift


class Histogram:
    """Counts per bucket; fed by run-length pairs (latency, count)."""

    __slots__ = ("counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max = 0
        self.min = -1

    def record(self, v: int, n: int = 1) -> None:
        if v < 0:
            v = 0
        k = bucket(v)
        c = self.counts
        c[k] = c.get(k, 0) + n
        self.total += n
        if v > self.max:
            self.max = v
        if self.min < 0 or v < self.min:
            self.min = v

    def record_runs(self, values: array, weights: array) -> None:
        """Fold parallel arrays of (latency, count) into the histogram."""
        c = self.counts
        get = c.get
        mx = self.max
        mn = self.min
        total = 0
        for v, n in zip(values, weights, strict=True):
            if v < 0:
                v = 0
            if v < _LINEAR:
                k = v
            else:
                s = v.bit_length() - _SIG_BITS
                k = (v >> s) << s
            c[k] = get(k, 0) + n
            total += n
            if v > mx:
                mx = v
            if mn < 0 or v < mn:
                mn = v
        self.total += total
        self.max = mx
        self.min = mn

    def merge(self, other: Histogram) -> None:
        c = self.counts
        for k, n in other.counts.items():
            c[k] = c.get(k, 0) + n
        self.total += other.total
        self.max = max(self.max, other.max)
        if other.min >= 0 and (self.min < 0 or other.min < self.min):
            self.min = other.min

    def to_dict(self) -> dict:
        return {"counts": self.counts, "total": self.total, "max": self.max, "min": self.min}

    @classmethod
    def from_dict(cls, d: Mapping) -> Histogram:
        h = cls()
        h.counts = {int(k): int(v) for k, v in d["counts"].items()}
        h.total = int(d["total"])
        h.max = int(d["max"])
        h.min = int(d["min"])
        return h

    def percentiles(self, ps: Iterable[float]) -> list[int]:
        """Value at each percentile (0..100); the max for 100. Empty -> zeros."""
        ps = list(ps)
        if self.total == 0:
            return [0 for _ in ps]
        keys = sorted(self.counts)
        out: list[int] = []
        for p in ps:
            if p >= 100:
                out.append(self.max)
                continue
            rank = max(1, math.ceil(self.total * p / 100))
            seen = 0
            val = keys[-1]
            for k in keys:
                seen += self.counts[k]
                if seen >= rank:
                    val = k
                    break
            out.append(min(max(val, self.min), self.max))
        return out

    def summary_us(self) -> dict[str, float | int]:
        """count, p50/p95/p99/max in microseconds (1 decimal)."""
        p50, p95, p99, mx = self.percentiles((50, 95, 99, 100))
        return {
            "count": self.total,
            "p50_us": round(p50 / 1000, 1),
            "p95_us": round(p95 / 1000, 1),
            "p99_us": round(p99 / 1000, 1),
            "max_us": round(mx / 1000, 1),
        }


def median(xs: Iterable[float]) -> float:
    s = sorted(xs)
    if not s:
        return 0.0
    n = len(s)
    mid = n // 2
    return float(s[mid]) if n % 2 else (s[mid - 1] + s[mid]) / 2.0
