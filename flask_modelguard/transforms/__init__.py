"""Output transforms: framework-free functions of a batch of answers.

An :class:`Answer` holds, for ``n`` instances and ``k`` classes, the
probability matrix, the served labels and what of it is sent. A transform maps
an answer (and a :class:`KeyedRandom`) to a new answer; a list of transforms is
applied in order by :func:`apply`.

Randomness is deterministic per (secret, account, input): the same account
asking the same question twice gets the same answer, so averaging repeated
queries does not remove the noise, and two accounts get different noise.

Transforms are also written as short strings, parsed by :func:`parse`:
``"round(2)"``, ``"top_k(3, mode='drop')"``, ``"label_only"``,
``"gaussian(0.05)"``, ``"reverse_sigmoid(beta=0.7, gamma=0.2)"``,
``"probability_mark(0.1)"``, ...
"""

from __future__ import annotations

from .base import MARK_KINDS, Answer, KeyedRandom, Transform, renormalise
from .deception import Misinformation, RandomPoison, Watermark
from .marking import ProbabilityMark
from .policy import REGISTRY, OutputPolicy, apply, parse, parse_all
from .shaping import GaussianNoise, HighConfidence, LabelOnly, LaplaceNoise, Renormalise, ReverseSigmoid, Round, TopK

__all__ = [
    "MARK_KINDS", "REGISTRY", "Answer", "GaussianNoise", "HighConfidence", "KeyedRandom", "LabelOnly", "LaplaceNoise",
    "Misinformation", "OutputPolicy", "ProbabilityMark", "RandomPoison", "Renormalise", "ReverseSigmoid", "Round", "TopK",
    "Transform", "Watermark", "apply", "parse", "parse_all", "renormalise",
]
