"""The probability mark as a transform (:mod:`flask_modelguard.probmark`):
a keyed, per-account lift of three non-top classes that keeps every served label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import probmark
from .base import Answer, KeyedRandom, Transform, _number


@dataclass(frozen=True)
class ProbabilityMark(Transform):
    """Each answer gives up to ``strength`` of its mass to three classes keyed
    by the account and the answer's top class (3 : 2 : 1); the top class stays
    on top. For everyone, so a clone trained on an account's probabilities
    carries that account's mark (:func:`flask_modelguard.probmark.test`)."""

    strength: float = 0.1
    name: ClassVar[str] = "probability_mark"
    keeps_argmax: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _number(self.strength, "probability mark strength", 0.0, 0.5)

    def __call__(self, answer: Answer, rng: KeyedRandom) -> Answer:
        if rng.account_key is None:
            raise ValueError("the probability mark needs the account's key (KeyedRandom.for_inputs)")
        return answer.but(probs=probmark.lift(answer.probs, rng.account_key, self.strength))
