"""A data-free thief: no natural data at all, only synthetic inputs optimised
against its own clone. Framework-free (numpy and scikit-learn).

Data-free model extraction (DFME: Truong et al., "Data-Free Model
Extraction", CVPR 2021; MAZE: Kariyappa et al., "MAZE: Data-Free Model
Stealing Attack Using Zeroth-Order Gradient Estimation", CVPR 2021) trains a
generator to produce inputs on which the clone (student) disagrees most with
the victim (teacher), queries them, and trains the clone on the answers. This
is the cheap version: no generator network; the inputs themselves are
optimised by a few signed gradient steps on the clone (analytic input
gradients, :mod:`.gradients`), starting from uniform noise and from the last
round's inputs the retrained clone still gets wrong.

The objective of an input is the clone's predictive entropy (where it is
unsure, it is likely to disagree with the victim), plus, for an input started
from a served query with answer ``y``, the clone's cross-entropy to ``y``
(its disagreement with the victim's answer there). Treating the victim's
answer as locally constant is what makes the victim's gradient unnecessary:
exact almost everywhere when only labels are served, the zeroth-order
estimation of MAZE/DFME is left out.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np

from .gradients import _class_gradient, _entropy_gradient
from .surrogate import Clone, train_clone
from .thief import _check, _in_range, _Thief


class DataFreeThief(_Thief):
    """Data-free extraction by clone-guided synthetic inputs (see the module).

    Works in rounds: ``initial`` uniform inputs first; then, once a round is
    answered, it trains its clone (``substitute``: "mlp" with ``hidden``
    units, or "logreg") on everything served (``epochs`` more epochs from
    the last round's weights) and generates the next round of
    ``max(step, grow·served)`` inputs: a share ``hard`` (at most) starts from
    the previous round's inputs the clone disagrees with the victim on, the
    rest from uniform noise; each takes ``steps`` signed gradient steps of
    ``lam·(high − low)`` up the objective, clipped to [low, high] (and
    rounded once at the end when the world is integer). :attr:`entropy`
    records, per round, the clone's mean entropy on uniform noise and on the
    generated inputs.
    """

    kind = "data-free"
    SUBSTITUTES: ClassVar[tuple[str, ...]] = ("mlp", "logreg")

    def __init__(self, name: str, budget: int, *, initial: int = 100, step: int = 100, grow: float = 0.2,
                 steps: int = 5, lam: float = 0.05, hard: float = 0.5, substitute: str = "mlp", hidden: int = 32,
                 epochs: int = 20, accounts: int = 1, batch: int = 10, interval: float = 1.0) -> None:
        _check("substitute", substitute, self.SUBSTITUTES)
        if min(initial, step, steps, hidden, epochs) < 1:
            raise ValueError("initial, step, steps, hidden and epochs must be >= 1")
        if lam <= 0 or grow < 0 or not 0.0 <= hard <= 1.0:
            raise ValueError("lam must be > 0, grow >= 0 and hard in [0, 1]")
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, initial=initial,
                         step=step, grow=grow, steps=steps, lam=lam, hard=hard, substitute=substitute,
                         hidden=hidden, epochs=epochs)
        self.epochs = epochs
        self.initial, self.step, self.grow, self.steps = initial, step, grow, steps
        self.lam, self.hard, self.substitute, self.hidden = lam, hard, substitute, hidden
        self.clone: Clone | None = None
        #: Per round: (clone's mean entropy on uniform noise, on the generated inputs).
        self.entropy: list[tuple[float, float]] = []
        self._mark = 0  # served inputs before the current round

    def start(self) -> None:
        self._queue = self._noise(self.initial)

    def _noise(self, n: int) -> np.ndarray:
        return _in_range(self.world, self.rng.random((n, self.world.dim)))

    def _queries(self, n: int) -> np.ndarray:
        if not len(self._queue):
            self._queue = self._generate()
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def _generate(self) -> np.ndarray:
        """The next round: retrain the clone, then optimise the round's starts."""
        X, y = self.X, self.y
        if not len(X):  # nothing served (errors only): noise again
            return self._noise(self.step)
        self._fit(X, y)
        assert self.clone is not None
        size = max(self.step, int(self.grow * len(X)))
        starts, targets = self._starts(size, X[self._mark:], y[self._mark:])
        self._mark = len(X)
        generated = self.world.clip(self._ascend(starts, targets))
        noise = self._noise(size)
        self.entropy.append((float(_entropy_gradient(self.clone, noise)[0].mean()),
                             float(_entropy_gradient(self.clone, generated)[0].mean())))
        return generated[self.rng.permutation(len(generated))]

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        """Train the clone on everything served: from scratch at first (and when
        a new class appears), then ``epochs`` more epochs from its current weights
        (the student is updated round after round, as in DFME)."""
        clone = self.clone
        if clone is None or clone.model is None or not np.array_equal(clone.classes_, np.unique(y)):
            self.clone = train_clone(X, y, kind=self.substitute, seed=int(self.rng.integers(2**31)),
                                     low=self.world.low, high=self.world.high, hidden=self.hidden,
                                     early_stopping=False)
            return
        clone.model.set_params(warm_start=True, max_iter=self.epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: a few epochs per round, on purpose
            clone.model.fit(clone.transform(X), y)

    def _starts(self, size: int, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start points and their targets (the victim's answer, or -1 for noise)."""
        assert self.clone is not None
        wrong = np.flatnonzero(self.clone.predict(X) != y) if len(X) else np.empty(0, dtype=int)
        pick = self.rng.permutation(wrong)[:int(self.hard * size)]
        starts = np.concatenate([X[pick], self._noise(size - len(pick))])
        targets = np.concatenate([y[pick], np.full(size - len(pick), -1)]).astype(int)
        return starts, targets

    def _ascend(self, Z: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Signed gradient steps up entropy + cross-entropy to the target (when one)."""
        assert self.clone is not None
        lam = self.lam * (self.world.high - self.world.low)
        hard = targets >= 0
        Z = np.asarray(Z, dtype=np.float64)
        for _ in range(self.steps):
            _, grad = _entropy_gradient(self.clone, Z)
            if hard.any():
                P = self.clone.predict_proba(Z[hard])
                column = np.searchsorted(self.clone.classes_, targets[hard])
                p = P[np.arange(len(P)), np.minimum(column, P.shape[1] - 1)]
                grad[hard] -= _class_gradient(self.clone, Z[hard], targets[hard]) / np.maximum(p, 1e-6)[:, None]
            Z = np.clip(Z + lam * np.sign(grad), self.world.low, self.world.high)
        return Z
