"""Transforms that coarsen or blur what an answer tells: rounding, top-k,
label-only, high-confidence, noise, reverse sigmoid. The top-1 label stays
unless a transform says otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..exc import InvalidValue
from .base import Answer, KeyedRandom, Transform, _integer, _number, _restore_argmax, renormalise


@dataclass(frozen=True)
class Round(Transform):
    """Round probabilities to ``decimals`` places (ART's ``Rounded``)."""

    decimals: int = 2
    name: ClassVar[str] = "round"

    def __post_init__(self) -> None:
        _integer(self.decimals, "round decimals")

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        return answer.but(probs=np.round(answer.probs, self.decimals))


@dataclass(frozen=True)
class TopK(Transform):
    """Send only the k largest entries: the others zeroed (``mode="zero"``) or
    left out of the response (``mode="drop"``); ``renormalise`` rescales the kept ones."""

    k: int = 1
    mode: str = "zero"
    renormalise: bool = False
    name: ClassVar[str] = "top_k"

    def __post_init__(self) -> None:
        _integer(self.k, "top_k k", 1)
        if self.mode not in ("zero", "drop"):
            raise InvalidValue("top_k mode must be 'zero' or 'drop'")

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        p = answer.probs
        k = min(self.k, p.shape[1])
        # The served label ranks first, whatever the ties, so it is always kept.
        ranking = p.copy()
        ranking[np.arange(len(p)), answer.labels] = np.inf
        order = np.argsort(-ranking, axis=1, kind="stable")[:, :k]
        keep = np.zeros_like(p, dtype=bool)
        np.put_along_axis(keep, order, True, axis=1)
        out = np.where(keep, p, 0.0)
        if self.renormalise:
            out = renormalise(out)
        if answer.keep is not None:
            keep &= answer.keep
        return answer.but(probs=out, keep=keep if self.mode == "drop" else answer.keep)


@dataclass(frozen=True)
class LabelOnly(Transform):
    """Send the label only (ART's ``ClassLabels``)."""

    name: ClassVar[str] = "label_only"

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        return answer.but(label_only=True)


@dataclass(frozen=True)
class HighConfidence(Transform):
    """Zero every probability below ``cutoff`` (ART's ``HighConfidence``); the
    served label's entry is kept."""

    cutoff: float = 0.25
    name: ClassVar[str] = "high_confidence"

    def __post_init__(self) -> None:
        _number(self.cutoff, "high_confidence cutoff", 0.0, 1.0)

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        p = answer.probs
        keep = p >= self.cutoff
        keep[np.arange(len(p)), answer.labels] = True
        return answer.but(probs=np.where(keep, p, 0.0))


@dataclass(frozen=True)
class _Noise(Transform):
    scale: float = 0.05
    keep_argmax: bool = True

    def __post_init__(self) -> None:
        _number(self.scale, f"{self.name} scale")

    def _noise(self, rng: KeyedRandom, k: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        p = answer.probs
        noisy = renormalise(p + self.scale * self._noise(rng, p.shape[1]))
        if self.keep_argmax:
            noisy = _restore_argmax(noisy, answer.labels)
            return answer.but(probs=noisy)
        return answer.but(probs=noisy, labels=noisy.argmax(axis=1))


@dataclass(frozen=True)
class GaussianNoise(_Noise):
    """Add N(0, scale²) noise, clip at 0, renormalise; keeps the argmax by default."""

    name: ClassVar[str] = "gaussian"

    def _noise(self, rng: KeyedRandom, k: int) -> np.ndarray:
        return rng.normal("gaussian", k)


@dataclass(frozen=True)
class LaplaceNoise(_Noise):
    """Add Laplace(0, scale) noise, clip at 0, renormalise; keeps the argmax by default."""

    name: ClassVar[str] = "laplace"

    def _noise(self, rng: KeyedRandom, k: int) -> np.ndarray:
        return rng.laplace("laplace", k)


@dataclass(frozen=True)
class ReverseSigmoid(Transform):
    """Reverse sigmoid perturbation (Lee et al. 2019), in the form of IBM ART's
    postprocessor: ``p - beta * (sigmoid(gamma * logit(p)) - 1/2)``, clipped to
    [0, 1] and renormalised. It can reorder classes; ``keep_argmax`` (default)
    swaps the served label back on top."""

    beta: float = 1.0
    gamma: float = 0.1
    keep_argmax: bool = True
    name: ClassVar[str] = "reverse_sigmoid"

    def __post_init__(self) -> None:
        _number(self.beta, "reverse_sigmoid beta")
        _number(self.gamma, "reverse_sigmoid gamma")
        if self.beta <= 0 or self.gamma <= 0:
            raise InvalidValue("reverse_sigmoid needs beta > 0 and gamma > 0")

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        p = answer.probs
        clipped = np.clip(p, 1e-9, 1.0 - 1e-9)
        r = self.beta * (1.0 / (1.0 + np.exp(-self.gamma * np.log(clipped / (1.0 - clipped)))) - 0.5)
        out = renormalise(np.clip(p - r, 0.0, 1.0))
        if self.keep_argmax:
            return answer.but(probs=_restore_argmax(out, answer.labels))
        return answer.but(probs=out, labels=out.argmax(axis=1))


@dataclass(frozen=True)
class Renormalise(Transform):
    """Scale each row to sum 1 (after transforms that break the simplex)."""

    name: ClassVar[str] = "renormalise"

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        return answer.but(probs=renormalise(answer.probs))
