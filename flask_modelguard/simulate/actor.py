"""What a simulated user is: the base class of benign users and thieves.
Framework-free (numpy only).

An :class:`Actor` is asked for its next :class:`Request` (the inputs of one
API call, after a delay in simulated seconds), and told the :class:`Answer`
the API served. Thieves keep what they were served (:attr:`Actor.X`,
:attr:`Actor.y`, :attr:`Actor.P`), in order, to train their clone from it.
The :class:`World` is what the simulation knows about the served model: the
natural data benign users draw from, other data a thief can use, the input
range, and held-out data to measure clones on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass
class World:
    """The data of a simulation (everything in the model's input space, ``(n, d)`` arrays)."""

    #: Natural in-distribution inputs: what benign users send.
    pool: np.ndarray
    #: Held-out inputs and their true labels: clones are measured on them.
    test: np.ndarray
    test_labels: np.ndarray
    #: The victim's class probabilities (clone fidelity is agreement with it).
    victim: Callable[[np.ndarray], np.ndarray]
    n_classes: int
    #: Valid range of every input value.
    low: float = 0.0
    high: float = 1.0
    #: Natural data of another distribution (Knockoff-style thieves).
    other: np.ndarray | None = None
    #: A few natural inputs a thief starts from (Jacobian augmentation, mimicry).
    seeds: np.ndarray | None = None
    #: Values are integers (the inputs are quantised, like pixels 0..16).
    integer: bool = False
    #: True labels of :attr:`pool` (benign users' accuracy loss), when known.
    pool_labels: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.pool.shape[1])

    def clip(self, X: np.ndarray) -> np.ndarray:
        X = np.clip(X, self.low, self.high)
        return np.rint(X) if self.integer else X


@dataclass
class Request:
    """One API call an actor makes."""

    #: Simulated seconds after the actor's previous request (or the start).
    delay: float
    #: The inputs, ``(n, d)``: one request carries a batch.
    inputs: np.ndarray
    #: Which of the actor's accounts sends it (sybils have several).
    account: int = 0


@dataclass
class Answer:
    """What the API served for a :class:`Request`."""

    status: int
    #: Served labels (None unless status 200).
    labels: np.ndarray | None = None
    #: Served probabilities, ``(n, n_classes)`` (None when the route serves labels only).
    probabilities: np.ndarray | None = None
    #: Seconds to wait before retrying (429).
    retry_after: float | None = None
    #: Inputs left in the current window of the account's tightest limit (the
    #: guard counts a batch of n as n), and
    #: seconds until it resets (the ``RateLimit`` header), when sent.
    remaining: int | None = None
    reset: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.labels is not None


class Actor:
    """A simulated API user with a query budget (number of inputs it sends).

    Subclasses implement :meth:`plan` (the next inputs and delay) and may
    override :meth:`learn` (thieves that adapt to the answers). The base
    class keeps the budget, the bookkeeping of what was served, and backs off
    on 429 as a well-behaved client does.
    """

    #: The family name shown in reports ("benign", "random", "jacobian", ...).
    kind: ClassVar[str] = "actor"
    #: Ground truth of the evaluation.
    malicious: ClassVar[bool] = True

    def __init__(self, name: str, budget: int, *, accounts: int = 1, batch: int = 10,
                 interval: float = 1.0, **params: Any) -> None:
        if budget < 1 or accounts < 1 or batch < 1:
            raise ValueError("budget, accounts and batch must be >= 1")
        self.name = name
        self.budget = budget
        self.accounts = accounts
        self.batch = batch
        #: Mean simulated seconds between two requests.
        self.interval = interval
        self.params = params
        self.sent = 0
        self.refused = 0
        self._X: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._P: list[np.ndarray] = []
        self._retry: float = 0.0
        self._turn = 0
        self.world: World
        self.rng: np.random.Generator

    # -- what subclasses implement -------------------------------------------------

    def start(self) -> None:
        """Called once :attr:`world` and :attr:`rng` are set, before the first request."""

    def plan(self, n: int) -> tuple[np.ndarray, float]:
        """The next ``n`` inputs and the delay before sending them."""
        raise NotImplementedError

    def learn(self, inputs: np.ndarray, answer: Answer) -> None:
        """React to a served answer (default: nothing beyond bookkeeping)."""

    # -- driven by the runner -----------------------------------------------------

    def bind(self, world: World, rng: np.random.Generator) -> Actor:
        self.world, self.rng = world, rng
        self.start()
        return self

    def next(self) -> Request | None:
        """The next request, or None when the budget is spent."""
        left = self.budget - self.sent
        if left <= 0:
            return None
        inputs, delay = self.plan(min(self.batch, left))
        if len(inputs) == 0:
            return None
        inputs = self.world.clip(np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1))[:left]
        delay, self._retry = max(delay, self._retry), 0.0
        account = self._turn % self.accounts
        self._turn += 1
        return Request(float(delay), inputs, account)

    def receive(self, request: Request, answer: Answer) -> None:
        """Book the answer to ``request`` (the runner calls it for every request)."""
        if answer.status == 429:
            self.refused += 1
            self._retry = float(answer.retry_after or 1.0)
            self._turn -= 1  # the same account tries again after the wait
            self.requeue(request.inputs)
            return
        self.sent += len(request.inputs)
        if answer.ok:
            assert answer.labels is not None
            self._X.append(request.inputs)
            self._y.append(np.asarray(answer.labels))
            if answer.probabilities is not None:
                self._P.append(np.asarray(answer.probabilities, dtype=np.float64))
        self.learn(request.inputs, answer)

    def requeue(self, inputs: np.ndarray) -> None:
        """Inputs refused with 429, to be sent again (default: planned anew)."""

    # -- what it got --------------------------------------------------------------

    @property
    def X(self) -> np.ndarray:
        return np.concatenate(self._X) if self._X else np.empty((0, self.world.dim))

    @property
    def y(self) -> np.ndarray:
        return np.concatenate(self._y) if self._y else np.empty(0, dtype=int)

    @property
    def P(self) -> np.ndarray | None:
        """Served probabilities, when every answer carried them."""
        if not self._P or len(self._P) != len(self._X):
            return None
        return np.concatenate(self._P)

    def jitter(self, mean: float) -> float:
        """An exponential delay of mean ``mean`` (Poisson arrivals)."""
        return float(self.rng.exponential(mean)) if mean > 0 else 0.0
