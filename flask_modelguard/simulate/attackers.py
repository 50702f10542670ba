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
from typing import Any, ClassVar

import numpy as np

from .actor import Actor, Answer, Request
from .datafree import DataFreeThief
from .gradients import _class_gradient
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
    _natural_rows,
    _source,
    _Thief,
    _Transfer,
    _transformed,
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


class ActiveLearningThief(_Thief):
    """Pool-based active learning (Chandrasekaran et al., "Exploring Connections
    Between Active Learning and Model Extraction", USENIX Security 2020; Pal et
    al., "ActiveThief", AAAI 2020).

    The pool is ``world.other``, else ``pool_size`` transformed copies of the
    thief's natural inputs (never ``world.test``). After ``initial`` random
    pool points, every round retrains a substitute (``substitute``) on all
    answers and picks the ``step`` unsent pool points it is least sure of:
    ``strategy="uncertainty"``: lowest top probability; ``"margin"``:
    smallest gap between the top two. When the pool is used up it is reused.
    """

    kind = "active"
    STRATEGIES: ClassVar[tuple[str, ...]] = ("uncertainty", "margin")

    def __init__(self, name: str, budget: int, *, strategy: str = "margin", initial: int = 100, step: int = 100,
                 pool_size: int = 2000, substitute: str = "logreg", accounts: int = 1, batch: int = 10,
                 interval: float = 1.0) -> None:
        _check("strategy", strategy, self.STRATEGIES)
        _check("substitute", substitute, ("mlp", "logreg"))
        if initial < 1 or step < 1 or pool_size < 1:
            raise ValueError("initial, step and pool_size must be >= 1")
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, strategy=strategy,
                         initial=initial, step=step, pool_size=pool_size, substitute=substitute)
        self.strategy, self.initial, self.step = strategy, initial, step
        self.pool_size, self.substitute = pool_size, substitute
        self.clone: Clone | None = None
        #: Pool indices picked by uncertainty (after the random start), in order.
        self.picked: list[int] = []

    def start(self) -> None:
        other = self.world.other
        if other is not None and len(other):
            self.pool = np.asarray(other, dtype=np.float64)
        else:
            natural = _natural_rows(self.world)
            self.pool = _transformed(natural[self.rng.integers(0, len(natural), self.pool_size)], self.world, self.rng)
        self._unused = np.ones(len(self.pool), dtype=bool)
        first = self._take(self.rng.permutation(len(self.pool))[:self.initial])
        self._queue = list(first)

    def _take(self, index: np.ndarray) -> np.ndarray:
        self._unused[index] = False
        if not self._unused.any():
            self._unused[:] = True
        return index

    def _queries(self, n: int) -> np.ndarray:
        if not self._queue:
            self._queue = list(self._select())
            self.picked.extend(self._queue)
        index, self._queue = self._queue[:n], self._queue[n:]
        return self.pool[index]

    def _select(self) -> np.ndarray:
        candidates = np.flatnonzero(self._unused)
        X, y = self.X, self.y
        if len(X):
            self.clone = train_clone(X, y, kind=self.substitute, seed=int(self.rng.integers(2**31)),
                                     low=self.world.low, high=self.world.high)
        if self.clone is None or self.clone.model is None:
            return self._take(self.rng.permutation(candidates)[:self.step])
        score = _uncertainty(self.clone.predict_proba(self.pool[candidates]), self.strategy)
        return self._take(candidates[np.argsort(score, kind="stable")[:self.step]])


def _uncertainty(P: np.ndarray, strategy: str) -> np.ndarray:
    """Confidence of each row of class scores (lower: less sure): top score or top-2 margin."""
    if strategy == "uncertainty" or P.shape[1] < 2:
        return P.max(axis=1)
    top2 = np.sort(P, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


# -- evasive thieves ------------------------------------------------------------------


class AdaptiveThief(_Thief):
    """A thief that tries to pass for a benign user and never trips the quota.

    A fraction ``natural`` of its inputs are natural ones (``world.seeds``,
    else ``world.pool``; cover traffic), the rest attack queries (``attack``:
    "knockoff" or "random"), mixed in every batch. It paces itself by the
    ``RateLimit`` header of its latest answer: with ``remaining`` inputs left
    until the window resets in ``reset`` seconds, it sends at most
    ``remaining`` more inputs, spread evenly over those seconds, and waits
    for the reset when none are left (the quota counts inputs: a batch of N
    costs N). Before any header, ``rate`` (inputs per second it assumes it
    may send) sets the delay; without it, exponential delays of mean
    ``interval``. Delays are randomised upwards only (never faster than the
    pacing allows).
    """

    kind = "adaptive"
    #: Seconds added after a window's reset before sending again.
    _MARGIN = 1.0

    def __init__(self, name: str, budget: int, *, natural: float = 0.1, attack: str = "knockoff",
                 rate: float | None = None, accounts: int = 1, batch: int = 10, interval: float = 1.0) -> None:
        if not 0.0 <= natural <= 1.0:
            raise ValueError("natural must be in [0, 1]")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0")
        _check("attack", attack, ("knockoff", "random"))
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, natural=natural,
                         attack=attack, rate=rate)
        self.natural, self.attack, self.rate = natural, attack, rate
        #: Simulated seconds since the start, at the thief's latest request.
        self.clock = 0.0
        #: account → (inputs left, simulated time its window resets), from its latest answer.
        self._quota: dict[int, tuple[int, float]] = {}
        #: Whether each input planned so far was natural cover traffic (in order).
        self.cover: list[bool] = []

    def start(self) -> None:
        self._attack = _source(self.attack, self.world, self.rng)
        self._cover = _source("natural", self.world, self.rng)

    def next(self) -> Request | None:
        request = super().next()
        if request is not None:
            self.clock += request.delay
        return request

    def receive(self, request: Request, answer: Answer) -> None:
        if answer.remaining is not None and answer.reset is not None:
            self._quota[request.account] = (int(answer.remaining), self.clock + max(0.0, float(answer.reset)))
        super().receive(request, answer)

    def _window(self) -> tuple[int, float] | None:
        """Inputs left, and seconds until the reset, of the next request's account (None: unknown)."""
        quota = self._quota.get(self._turn % self.accounts)
        if quota is None or quota[1] <= self.clock:
            return None
        return quota[0], quota[1] - self.clock

    def plan(self, n: int) -> tuple[np.ndarray, float]:
        window = self._window()
        if self._pending is None and window is not None and window[0] > 0:
            n = min(n, window[0])
        return super().plan(n)

    def _queries(self, n: int) -> np.ndarray:
        natural = self.rng.random(n) < self.natural
        out = np.empty((n, self.world.dim))
        out[natural] = self._cover.draw(int(natural.sum()))
        out[~natural] = self._attack.draw(int(n - natural.sum()))
        self.cover.extend(bool(v) for v in natural)
        return out

    def _delay(self, n: int) -> float:
        slack = 1.0 + 0.2 * float(self.rng.random())
        window = self._window()
        if window is not None:
            left, reset = window
            if left < n:  # this batch does not fit: wait for the window to reset
                return reset + self._MARGIN * slack
            return reset / (left // n + 1) * slack  # spread the batches that fit over the window
        if self.rate is not None:
            return n / self.rate * slack
        return self.jitter(self.interval)


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
                AdversarialThief, JacobianThief, KnockoffThief, ActiveLearningThief, AdaptiveThief, SybilThief,
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
