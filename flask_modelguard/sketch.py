"""Counting distinct inputs with bounded memory, mergeably. Framework-free.

:class:`UniqueCounter` keeps the exact set of fingerprints up to a bound, then
switches to a HyperLogLog (Flajolet et al. 2007) with 2^p one-byte registers
(about 1.04/sqrt(2^p) relative error: 3% at p = 10, 1 KiB). Both merge:
sets by union, sketches by register-wise maximum, so the merge of two
processes' counters equals the counter of one process that saw everything.
Fingerprints are keyed hashes already, so their bits are uniform.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .stats import pack, unpack

_EMPTY = np.zeros(0, dtype=np.uint64)


class UniqueCounter:
    """The exact set (a sorted array of 64-bit hashes: 8 bytes each) up to
    ``exact_limit`` inputs, then a HyperLogLog of ``2**p`` registers."""

    __slots__ = ("exact_limit", "p", "exact", "registers")

    def __init__(self, exact_limit: int = 256, p: int = 10) -> None:
        self.exact_limit = exact_limit
        self.p = p
        self.exact: np.ndarray | None = _EMPTY
        self.registers: bytearray | None = None

    @staticmethod
    def _hash(fingerprint: str) -> int:
        return int(fingerprint[:16], 16)  # 64 uniform bits of a keyed BLAKE2b

    def _to_sketch(self) -> None:
        self.registers = bytearray(1 << self.p)
        for h in (self.exact if self.exact is not None else _EMPTY).tolist():
            self._add_hash(h)
        self.exact = None

    def _add_hash(self, h: int) -> None:
        assert self.registers is not None
        index = h >> (64 - self.p)
        rest = h & ((1 << (64 - self.p)) - 1)
        rank = (64 - self.p) - rest.bit_length() + 1
        if rank > self.registers[index]:
            self.registers[index] = rank

    def add(self, fingerprints: Iterable[str]) -> UniqueCounter:
        hashes = [self._hash(fp) for fp in fingerprints]
        if self.exact is not None:
            self._add_exact(np.asarray(hashes, dtype=np.uint64))
        else:
            for h in hashes:
                self._add_hash(h)
        return self

    def _add_exact(self, hashes: np.ndarray) -> None:
        assert self.exact is not None
        if hashes.size == 1:  # the common case: one input, inserted in order
            at = int(np.searchsorted(self.exact, hashes[0]))
            if at < self.exact.size and self.exact[at] == hashes[0]:
                return
            self.exact = np.concatenate((self.exact[:at], hashes, self.exact[at:]))  # np.insert is slower
        else:
            self.exact = np.union1d(self.exact, hashes)
        if self.exact.size > self.exact_limit:
            self._to_sketch()

    def merge(self, other: UniqueCounter) -> UniqueCounter:
        if (other.p, other.exact_limit) != (self.p, self.exact_limit):
            raise ValueError("cannot merge counters of different precision")
        if self.exact is not None and other.exact is not None:
            self._add_exact(other.exact)
            return self
        if self.exact is not None:
            self._to_sketch()
        assert self.registers is not None
        if other.exact is not None:
            for h in other.exact.tolist():
                self._add_hash(h)
        else:
            assert other.registers is not None
            self.registers = bytearray(max(a, b) for a, b in zip(self.registers, other.registers))
        return self

    def estimate(self) -> float:
        if self.exact is not None:
            return float(self.exact.size)
        assert self.registers is not None
        m = len(self.registers)
        alpha = 0.7213 / (1 + 1.079 / m)
        raw = alpha * m * m / sum(2.0 ** -r for r in self.registers)
        zeros = self.registers.count(0)
        if raw <= 2.5 * m and zeros:
            return m * math.log(m / zeros)  # linear counting for small cardinalities
        return raw

    def to_dict(self) -> dict[str, Any]:
        return {"exact_limit": self.exact_limit, "p": self.p,
                "exact": pack(self.exact, "<u8") if self.exact is not None else None,
                "registers": self.registers.hex() if self.registers is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UniqueCounter:
        counter = cls(int(data["exact_limit"]), int(data["p"]))
        if data.get("exact") is None:
            counter.exact = None
            counter.registers = bytearray.fromhex(data["registers"])
        else:
            exact = data["exact"]
            counter.exact = np.unique(unpack(exact, "<u8") if isinstance(exact, str)
                                      else np.asarray([int(h) for h in exact], dtype=np.uint64))
        return counter

    def copy(self) -> UniqueCounter:
        copy = UniqueCounter(self.exact_limit, self.p)
        copy.exact = None if self.exact is None else self.exact.copy()
        copy.registers = None if self.registers is None else bytearray(self.registers)
        return copy

    def nbytes(self) -> int:
        return self.exact.nbytes if self.exact is not None else len(self.registers or b"")
