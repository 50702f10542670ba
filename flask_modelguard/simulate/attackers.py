"""Model thieves: the query strategies of the model-extraction literature.
Framework-free (numpy and scikit-learn).

Every thief is an :class:`~.actor.Actor` with ``malicious = True`` and a
``kind`` shown in reports. Every thief accepts ``accounts=K`` (the base class
sends its requests round-robin over K accounts); :class:`SybilThief` is the
one whose point is that. Delays are exponential of mean ``interval``
(Poisson arrivals) unless said otherwise. A request refused with 429 is sent
again, unchanged, after ``retry_after`` (the base class waits).

==========================  =================================================
kind                        class
==========================  =================================================
random, random-<strategy>   :class:`~.synthetic.RandomThief` (uniform,
                            gaussian, exhaustive, systematic, adversarial)
jacobian                    :class:`JacobianThief` (Papernot et al. 2017)
knockoff                    :class:`KnockoffThief` (Orekondy et al. 2019)
active                      :class:`ActiveLearningThief` (Chandrasekaran et
                            al. 2020; Pal et al. 2020)
adaptive                    :class:`AdaptiveThief`
copycat                     :class:`~.learning.CopycatThief` (natural
                            inputs only: a heavy benign user's)
sybil                       :class:`SybilThief`
low-and-slow                :class:`LowAndSlowThief`
natural-patches             :class:`~.natural.NaturalPatchThief` (Knockoff
                            Nets with photographs of another domain)
mixed                       :class:`~.natural.MixedThief` (a share of real
                            inputs among synthetic ones)
data-free                   :class:`~.datafree.DataFreeThief` (DFME, Truong
                            et al. 2021; MAZE, Kariyappa et al. 2021)
==========================  =================================================

:data:`ACTORS` maps every kind (the benign users' too) to its class and
:func:`make_actor` builds one from a scenario entry. The common base is in
:mod:`.thief`, the synthetic strategies in :mod:`.synthetic`, the clones'
input gradients in :mod:`.gradients`.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from .actor import Actor
from .datafree import DataFreeThief
from .gradients import _class_gradient
from .learning import ActiveLearningThief, AdaptiveThief, CopycatThief
from .natural import MixedThief, NaturalPatchThief
from .surrogate import Clone, train_clone
from .synthetic import (
    AdversarialThief,
    ExhaustiveThief,
    GaussianThief,
    RandomThief,
    SystematicThief,
    UniformThief,
)
from .thief import (
    _check,
    _in_range,
    _source,
    _Thief,
    _Transfer,
)
from .users import BenignUser, PowerUser

# -- Jacobian-based dataset augmentation ------------------------------------------


class JacobianThief(_Thief):
    """Jacobian-based dataset augmentation (Papernot et al., "Practical
    Black-Box Attacks against Machine Learning", ASIACCS 2017).

    Starts from the natural inputs it holds (``world.seeds``, else
    ``n_seeds`` rows of ``world.pool``) and works in rounds: once every query
    of a round is answered, it trains a substitute (``substitute``: "mlp" or
    "logreg", see :func:`~.surrogate.train_clone`) on all answers so far, then
    queries ``x + λ·sign(∂F_y(x)/∂x)`` for every input ``x`` it has sent
    (``y`` its served label, ``λ = lam·(high − low)``), so the set doubles per
    round. ``tau`` flips the sign of ``λ`` every ``tau`` rounds (the
    periodic step size of the paper; None: never); ``reservoir`` caps the
    new points of a round (reservoir sampling; None: all). New points already
    sent are dropped; when none is left, the inputs are perturbed by random
    signs instead (and, failing that, uniform points are sent).
    """

    kind = "jacobian"

    def __init__(self, name: str, budget: int, *, lam: float = 0.1, tau: int | None = None,
                 substitute: str = "mlp", reservoir: int | None = None, n_seeds: int = 100,
                 accounts: int = 1, batch: int = 10, interval: float = 1.0) -> None:
        _check("substitute", substitute, ("mlp", "logreg"))
        if lam <= 0 or (tau is not None and tau < 1) or (reservoir is not None and reservoir < 1) or n_seeds < 1:
            raise ValueError("lam must be > 0, and tau, reservoir and n_seeds >= 1")
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, lam=lam, tau=tau,
                         substitute=substitute, reservoir=reservoir, n_seeds=n_seeds)
        self.lam, self.tau, self.substitute, self.reservoir, self.n_seeds = lam, tau, substitute, reservoir, n_seeds
        #: Augmentation rounds done so far.
        self.round = 0
        self.clone: Clone | None = None

    def start(self) -> None:
        seeds = self.world.seeds
        if seeds is None or not len(seeds):
            pool = self.world.pool
            seeds = pool[self.rng.choice(len(pool), size=min(self.n_seeds, len(pool)), replace=False)]
        self._seeds = self._queue = self.world.clip(np.asarray(seeds, dtype=np.float64))
        self._seen = {row.tobytes() for row in self._queue}

    def _queries(self, n: int) -> np.ndarray:
        if not len(self._queue):
            self._queue = self._augment()
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def _augment(self) -> np.ndarray:
        X, y = self.X, self.y
        if not len(X):  # nothing served (errors only): the seeds again
            return self._seeds
        self.clone = train_clone(X, y, kind=self.substitute, seed=int(self.rng.integers(2**31)),
                                 low=self.world.low, high=self.world.high)
        if self.reservoir is not None and len(X) > self.reservoir:
            pick = self.rng.choice(len(X), size=self.reservoir, replace=False)
            X, y = X[pick], y[pick]
        step = self.lam * (self.world.high - self.world.low)
        if self.tau is not None:
            step *= (-1.0) ** (self.round // self.tau)
        self.round += 1
        direction = np.sign(_class_gradient(self.clone, X, y))
        new = self._fresh(self.world.clip(X + step * direction))
        if not len(new):
            new = self._fresh(self.world.clip(X + step * self.rng.choice([-1.0, 1.0], size=X.shape)))
        if not len(new):  # stuck (a tiny space, all of it sent): uniform points
            new = self.world.clip(_in_range(self.world, self.rng.random(X.shape)))
        return new[self.rng.permutation(len(new))]

    def _fresh(self, X: np.ndarray) -> np.ndarray:
        keep = []
        for i, row in enumerate(X):
            key = row.tobytes()
            if key not in self._seen:
                self._seen.add(key)
                keep.append(i)
        return X[keep]


# -- natural data of another distribution -----------------------------------------


class KnockoffThief(_Thief):
    """Knockoff Nets with the random strategy (Orekondy et al., "Knockoff Nets:
    Stealing Functionality of Black-Box Models", CVPR 2019): natural inputs of
    another distribution, ``world.other`` in random order; when the world has
    none, the thief's natural inputs (``world.seeds``, else ``world.pool``)
    shifted, rotated and noised (for square inputs, i.e. images; Gaussian
    noise of ``noise·(high − low)``)."""

    kind = "knockoff"

    def __init__(self, name: str, budget: int, *, noise: float = 0.05, accounts: int = 1, batch: int = 10,
                 interval: float = 1.0) -> None:
        if noise < 0:
            raise ValueError("noise must be >= 0")
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, noise=noise)
        self.noise = noise

    def start(self) -> None:
        self._source = _Transfer(self.world, self.rng, self.noise)

    def _queries(self, n: int) -> np.ndarray:
        return self._source.draw(n)


class SybilThief(_Thief):
    """One thief behind several accounts (a Sybil attack, Douceur, IPTPS 2002):
    its queries (``inner``: "knockoff" or "random") are sent round-robin over
    ``accounts`` accounts (default 5), so each account's quota and query
    history only sees a share of the attack."""

    kind = "sybil"

    def __init__(self, name: str, budget: int, *, inner: str = "knockoff", accounts: int = 5, batch: int = 10,
                 interval: float = 1.0) -> None:
        _check("inner", inner, ("knockoff", "random"))
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, inner=inner)
        self.inner = inner

    def start(self) -> None:
        self._source = _source(self.inner, self.world, self.rng)

    def _queries(self, n: int) -> np.ndarray:
        return self._source.draw(n)


class LowAndSlowThief(_Thief):
    """A thief that stays under per-window thresholds: one or two inputs per
    request (``batch``), long exponential delays (``interval``, default
    600 simulated seconds), queries from ``inner`` ("knockoff" or "random").
    Stealing 5,000 inputs this way takes weeks of simulated time."""

    kind = "low-and-slow"

    def __init__(self, name: str, budget: int, *, inner: str = "knockoff", accounts: int = 1, batch: int = 2,
                 interval: float = 600.0) -> None:
        _check("inner", inner, ("knockoff", "random"))
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, inner=inner)
        self.inner = inner

    def start(self) -> None:
        self._source = _source(self.inner, self.world, self.rng)

    def _queries(self, n: int) -> np.ndarray:
        return self._source.draw(int(self.rng.integers(1, n + 1)))


# -- registry ---------------------------------------------------------------------------

#: kind → class, for every actor a scenario can name (benign users included).
ACTORS: dict[str, type[Actor]] = {
    cls.kind: cls
    for cls in (BenignUser, PowerUser, RandomThief, UniformThief, GaussianThief, ExhaustiveThief, SystematicThief,
                AdversarialThief, JacobianThief, KnockoffThief, ActiveLearningThief, AdaptiveThief, CopycatThief,
                SybilThief,
                LowAndSlowThief, NaturalPatchThief, MixedThief, DataFreeThief)
}


def parameters(kind: str) -> tuple[str, ...]:
    """The parameters a scenario entry of ``kind`` may give (besides kind, name, budget)."""
    if kind not in ACTORS:
        raise ValueError(f"unknown actor kind {kind!r} (known: {', '.join(sorted(ACTORS))})")
    signature = inspect.signature(ACTORS[kind].__init__)
    return tuple(p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)


def make_actor(spec: dict[str, Any]) -> Actor:
    """Build an actor from a scenario entry, e.g. ``{"kind": "jacobian",
    "name": "jbda", "budget": 5000, "batch": 10, "interval": 1.0, "lam": 0.1}``.

    ``kind`` and ``budget`` are required, ``name`` defaults to the kind, and
    every other key must be a parameter of that kind (:func:`parameters`):
    ``accounts``, ``batch``, ``interval`` for all, plus the class's own.
    Raises ValueError for an unknown kind, a missing budget or an unknown
    parameter (and for invalid values, from the class).
    """
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind is None:
        raise ValueError(f"scenario entry without a kind: {spec!r}")
    kind = str(kind)
    accepted = parameters(kind)
    if "budget" not in spec:
        raise ValueError(f"{kind}: scenario entry without a budget")
    name, budget = spec.pop("name", kind), spec.pop("budget")
    unknown = sorted(set(spec) - set(accepted))
    if unknown:
        raise ValueError(f"{kind}: unknown parameter(s) {', '.join(unknown)} (accepted: {', '.join(accepted)})")
    return ACTORS[kind](str(name), int(budget), **spec)
