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


class UniqueCounter:
    def __init__(self, exact_limit: int = 256, p: int = 10) -> None:
        self.exact_limit = exact_limit
        self.p = p
        self.exact: set[int] | None = set()
        self.registers: bytearray | None = None

    @staticmethod
    def _hash(fingerprint: str) -> int:
        return int(fingerprint[:16], 16)  # 64 uniform bits of a keyed BLAKE2b

    def _to_sketch(self) -> None:
        self.registers = bytearray(1 << self.p)
        for h in self.exact or ():
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
        for fp in fingerprints:
            h = self._hash(fp)
            if self.exact is not None:
                self.exact.add(h)
                if len(self.exact) > self.exact_limit:
                    self._to_sketch()
            else:
                self._add_hash(h)
        return self

    def merge(self, other: UniqueCounter) -> UniqueCounter:
        if (other.p, other.exact_limit) != (self.p, self.exact_limit):
            raise ValueError("cannot merge counters of different precision")
        if self.exact is not None and other.exact is not None:
            self.exact |= other.exact
            if len(self.exact) > self.exact_limit:
                self._to_sketch()
            return self
        if self.exact is not None:
            self._to_sketch()
        assert self.registers is not None
        if other.exact is not None:
            for h in other.exact:
                self._add_hash(h)
        else:
            assert other.registers is not None
            self.registers = bytearray(max(a, b) for a, b in zip(self.registers, other.registers))
        return self

    def estimate(self) -> float:
        if self.exact is not None:
            return float(len(self.exact))
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
                "exact": sorted(self.exact) if self.exact is not None else None,
                "registers": self.registers.hex() if self.registers is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UniqueCounter:
        counter = cls(int(data["exact_limit"]), int(data["p"]))
        if data.get("exact") is None:
            counter.exact = None
            counter.registers = bytearray.fromhex(data["registers"])
        else:
            counter.exact = {int(h) for h in data["exact"]}
        return counter
