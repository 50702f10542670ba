"""Simulated actors: benign users and thieves, driven by a local loop that
answers with the example victim (no Flask)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from example_app.model import load_model, split
from flask_modelguard.simulate import attackers
from flask_modelguard.simulate.actor import Actor, Answer, Request, World
from flask_modelguard.simulate.attackers import (
    ACTORS,
    ActiveLearningThief,
    AdaptiveThief,
    DataFreeThief,
    JacobianThief,
    KnockoffThief,
    LowAndSlowThief,
    MixedThief,
    NaturalPatchThief,
    RandomThief,
    SybilThief,
    make_actor,
    parameters,
)
from flask_modelguard.simulate.gradients import _class_gradient, _entropy_gradient
from flask_modelguard.simulate.natural import natural_patches, photographs
from flask_modelguard.simulate.surrogate import train_clone
from flask_modelguard.simulate.thief import _transformed
from flask_modelguard.simulate.users import DAY, BenignUser, PowerUser

Serve = Callable[[float, Request], Answer]
Log = list[tuple[float, Request, Answer]]


@pytest.fixture(scope="module")
def victim(model_cache: str) -> Any:
    return load_model(model_cache)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return split()


@pytest.fixture(scope="module")
def world(victim: Any, digits: Any) -> World:
    X_train, X_test, _, y_test = digits
    half = len(X_test) // 2
    return World(pool=X_test[:half], test=X_test[half:], test_labels=y_test[half:], victim=victim.predict_proba,
                 n_classes=10, low=0.0, high=16.0, seeds=X_train[:100], integer=True)


@pytest.fixture(scope="module")
def unit_world(victim: Any, digits: Any) -> World:
    """The same data scaled to [0, 1], continuous, with no seeds (thieves fall back on the pool)."""
    _, X_test, _, y_test = digits
    half = len(X_test) // 2
    return World(pool=X_test[:half] / 16.0, test=X_test[half:] / 16.0, test_labels=y_test[half:],
                 victim=lambda X: victim.predict_proba(X * 16.0), n_classes=10)


def serve_victim(world: World, labels_only: bool = False) -> Serve:
    def serve(t: float, request: Request) -> Answer:
        P = world.victim(request.inputs)
        return Answer(200, P.argmax(axis=1), None if labels_only else P)
    return serve


def drive(actor: Actor, world: World, serve: Serve | None = None, *, seed: int = 0, until: float = np.inf,
          bind: bool = True) -> Log:
    """Run ``actor`` to the end of its budget (or simulated time ``until``); (time, request, answer) per call."""
    if bind:
        actor.bind(world, np.random.default_rng(seed))
    serve = serve or serve_victim(world)
    t, log = 0.0, []
    while (request := actor.next()) is not None:
        t += request.delay
        if t > until:
            break
        answer = serve(t, request)
        actor.receive(request, answer)
        log.append((t, request, answer))
    return log


def rows(X: np.ndarray) -> set[bytes]:
    return {np.asarray(x, dtype=np.float64).tobytes() for x in X}


def sent_inputs(log: Log) -> np.ndarray:
    return np.concatenate([r.inputs for _, r, a in log if a.status != 429])


def margin(P: np.ndarray) -> np.ndarray:
    top2 = np.sort(P, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


class FixedWindow:
    """A per-account fixed-window quota counting inputs, with RateLimit-style answers."""

    def __init__(self, world: World, limit: int, window: float) -> None:
        self.world, self.limit, self.window = world, limit, window
        self.used: Counter[tuple[int, int]] = Counter()
        self.refused = 0

    def __call__(self, t: float, request: Request) -> Answer:
        key = (request.account, int(t // self.window))
        reset = (key[1] + 1) * self.window - t
        cost = len(request.inputs)
        if self.used[key] + cost > self.limit:
            self.refused += 1
            return Answer(429, retry_after=reset, remaining=self.limit - self.used[key], reset=reset)
        self.used[key] += cost
        P = self.world.victim(request.inputs)
        return Answer(200, P.argmax(axis=1), P, remaining=self.limit - self.used[key], reset=reset)


# -- registry ----------------------------------------------------------------------


def test_registry_covers_every_kind() -> None:
    assert {"benign", "benign-power", "random", "random-uniform", "random-gaussian", "random-exhaustive",
            "random-systematic", "random-adversarial", "jacobian", "knockoff", "active", "adaptive", "copycat",
            "sybil", "low-and-slow", "natural-patches", "mixed", "data-free"} == set(ACTORS)
    for kind, cls in ACTORS.items():
        actor = make_actor({"kind": kind, "name": f"a-{kind}", "budget": 10})
        assert isinstance(actor, cls) and actor.kind == kind and actor.name == f"a-{kind}"
        assert actor.malicious is not kind.startswith("benign")
        assert {"accounts", "batch", "interval"} <= set(parameters(kind))
    jbda = make_actor({"kind": "jacobian", "name": "jbda", "budget": 5000, "batch": 10, "interval": 1.0, "lam": 0.2})
    assert (jbda.budget, jbda.batch, jbda.interval, jbda.params["lam"]) == (5000, 10, 1.0, 0.2)
    assert make_actor({"kind": "random-gaussian", "budget": 5}).strategy == "gaussian"
    assert make_actor({"kind": "random", "budget": 5, "strategy": "systematic"}).strategy == "systematic"
    assert make_actor({"kind": "sybil", "budget": 5}).accounts == 5


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "nope", "budget": 5}, "unknown actor kind 'nope'"),
    ({"budget": 5}, "without a kind"),
    ({"kind": "knockoff"}, "without a budget"),
    ({"kind": "knockoff", "budget": 5, "lam": 0.1}, "unknown parameter(s) lam"),
    ({"kind": "benign", "budget": 5, "strategy": "x", "zzz": 1}, "unknown parameter(s) strategy, zzz"),
    ({"kind": "random", "budget": 5, "strategy": "psychic"}, "unknown strategy 'psychic'"),
    ({"kind": "random-uniform", "budget": 5, "strategy": "gaussian"}, "always uses strategy 'uniform'"),
    ({"kind": "active", "budget": 5, "strategy": "entropy"}, "unknown strategy"),
    ({"kind": "knockoff", "budget": 0}, "budget"),
    ({"kind": "natural-patches", "budget": 5, "strategy": "adaptive"}, "unknown strategy 'adaptive'"),
    ({"kind": "natural-patches", "budget": 5, "step": 0}, "step must be >= 1"),
    ({"kind": "mixed", "budget": 5, "real": 1.5}, "real must be in"),
    ({"kind": "mixed", "budget": 5, "source": "psychic"}, "unknown source 'psychic'"),
    ({"kind": "data-free", "budget": 5, "hard": -0.1}, "hard in"),
    ({"kind": "data-free", "budget": 5, "substitute": "forest"}, "unknown substitute"),
    ({"kind": "data-free", "budget": 5, "epochs": 0}, "epochs must be >= 1"),
])
def test_make_actor_rejects_bad_entries(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_actor(spec)


# -- every actor -------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ACTORS))
@pytest.mark.parametrize("space", ["digits", "unit"])
def test_budget_exact_and_inputs_in_range(kind: str, space: str, world: World, unit_world: World) -> None:
    w = world if space == "digits" else unit_world
    actor = make_actor({"kind": kind, "budget": 137, "batch": 10})
    log = drive(actor, w, seed=3)
    X = sent_inputs(log)
    assert actor.sent == 137 == len(X) == len(actor.X) == len(actor.y)
    assert actor.next() is None
    assert all(1 <= len(r.inputs) <= 10 for _, r, _ in log)
    assert X.shape[1] == w.dim and X.min() >= w.low and X.max() <= w.high
    if w.integer:
        assert np.array_equal(X, np.rint(X))
    else:
        assert not np.array_equal(X, np.rint(X))
    assert all(r.delay >= 0 for _, r, _ in log)
    if kind.startswith("benign"):
        assert all(r.delay > 0 for _, r, _ in log)


@pytest.mark.parametrize("kind", ["benign", "random-adversarial", "jacobian", "active", "adaptive",
                                  "natural-patches", "mixed", "data-free"])
def test_deterministic_given_the_rng(kind: str, world: World) -> None:
    runs = [sent_inputs(drive(make_actor({"kind": kind, "budget": 150}), world, seed=7)) for _ in range(2)]
    assert np.array_equal(*runs)
    other = sent_inputs(drive(make_actor({"kind": kind, "budget": 150}), world, seed=8))
    assert not np.array_equal(runs[0], other)


# -- benign users ------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BenignUser, PowerUser])
def test_benign_users_send_pool_rows_only(cls: type[BenignUser], world: World) -> None:
    user = cls("u", 3000, repeat=0.2)
    log = drive(user, world)
    pool = rows(world.pool)
    assert all(x.tobytes() in pool for x in sent_inputs(log))
    assert user.sent == 3000 and not user.malicious
    sizes = [len(r.inputs) for _, r, _ in log]
    assert max(sizes) <= user.batch and Counter(sizes).most_common(1)[0][0] <= user.batch // 2
    # a retrying client: some requests repeat an earlier one
    seen: set[bytes] = set()
    repeats = 0
    for _, r, _ in log:
        key = r.inputs.tobytes()
        repeats += key in seen
        seen.add(key)
    assert repeats > 0


def test_benign_users_have_their_own_data(world: World) -> None:
    a = sent_inputs(drive(BenignUser("a", 50), world, seed=1))
    b = sent_inputs(drive(BenignUser("b", 50), world, seed=2))
    assert not np.array_equal(a[:10], b[:10])
    small = sent_inputs(drive(BenignUser("s", 500, subset=0.1, repeat=0.0), world))
    assert len(rows(small)) <= round(0.1 * len(world.pool))


def test_power_user_is_heavier_than_a_light_user(world: World) -> None:
    light, power = BenignUser("light", 500), PowerUser("power", 500)
    light_log, power_log = drive(light, world), drive(power, world)
    assert power.kind == "benign-power" and not power.malicious
    assert len(power_log) < len(light_log) / 3  # bigger batches
    assert power_log[-1][0] < light_log[-1][0] / 10  # much faster


def test_benign_day_cycle_over_a_simulated_week(world: World) -> None:
    user = BenignUser("u", 10**6, interval=300.0, burst=0.0, repeat=0.0)
    log = drive(user, world, lambda t, r: Answer(200, np.zeros(len(r.inputs), dtype=int)), until=7 * DAY)
    hours = np.array([(t % DAY) / 3600.0 for t, _, _ in log])
    day = int(((hours >= 8) & (hours < 20)).sum())
    night = len(hours) - day
    assert day > 2 * night > 0
    assert abs(len(log) - 7 * DAY / 300.0) < 0.15 * 7 * DAY / 300.0  # interval is the mean over a day
    busiest = np.bincount(hours.astype(int), minlength=24)
    assert 11 <= busiest.argmax() <= 19 and (busiest.argmin() <= 7 or busiest.argmin() >= 23)
    flat = drive(BenignUser("f", 10**6, interval=300.0, burst=0.0, diurnal=0.0), world,
                 lambda t, r: Answer(200, np.zeros(len(r.inputs), dtype=int)), until=7 * DAY)
    flat_hours = np.array([(t % DAY) / 3600.0 for t, _, _ in flat])
    flat_day = int(((flat_hours >= 8) & (flat_hours < 20)).sum())
    assert 0.8 < flat_day / (len(flat) - flat_day) < 1.25


def test_benign_bursts_are_quick(world: World) -> None:
    calm = [r.delay for _, r, _ in drive(BenignUser("c", 2000, burst=0.0), world)]
    bursty = [r.delay for _, r, _ in drive(BenignUser("b", 2000, burst=0.5), world)]
    assert np.mean(np.array(bursty) < 5.0) > np.mean(np.array(calm) < 5.0) + 0.3


# -- 429 and accounts --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["benign", "sybil", "jacobian", "random-adversarial", "adaptive"])
def test_429_waits_retries_same_account_and_counts_nothing(kind: str, world: World) -> None:
    actor = make_actor({"kind": kind, "budget": 200, "accounts": 3})
    calls: list[tuple[Request, Answer]] = []
    served = serve_victim(world)

    def serve(t: float, request: Request) -> Answer:
        answer = Answer(429, retry_after=30.0) if len(calls) in (3, 4) else served(t, request)
        calls.append((request, answer))
        return answer

    sent_before: list[int] = []
    actor.bind(world, np.random.default_rng(0))
    while (request := actor.next()) is not None:
        sent_before.append(actor.sent)
        actor.receive(request, serve(0.0, request))
    refused, retry, second_retry = calls[3][0], calls[4][0], calls[5][0]
    assert actor.refused == 2
    assert retry.delay >= 30.0 and second_retry.delay >= 30.0
    assert refused.account == retry.account == second_retry.account
    assert np.array_equal(refused.inputs, retry.inputs) and np.array_equal(refused.inputs, second_retry.inputs)
    assert sent_before[3] == sent_before[4] == sent_before[5]  # a refusal counts nothing
    assert actor.sent == 200 == sum(len(r.inputs) for r, a in calls if a.status == 200)
    assert len(actor.X) == 200


def test_sybil_spreads_over_its_accounts(world: World) -> None:
    thief = SybilThief("s", 1000, batch=10)
    log = drive(thief, world)
    per_account = Counter(r.account for _, r, _ in log)
    assert sorted(per_account) == [0, 1, 2, 3, 4]
    assert max(per_account.values()) - min(per_account.values()) <= 1
    assert [r.account for _, r, _ in log[:6]] == [0, 1, 2, 3, 4, 0]
    assert make_actor({"kind": "knockoff", "budget": 10, "accounts": 3}).accounts == 3


# -- thieves --------------------------------------------------------------------------


def test_random_uniform_and_gaussian(world: World) -> None:
    U = sent_inputs(drive(RandomThief("u", 2000), world))
    assert abs(U.mean() - 8.0) < 0.3 and set(np.unique(U)) == set(range(17))
    G = sent_inputs(drive(RandomThief("g", 2000, strategy="gaussian"), world))
    assert abs(G.mean() - 8.0) < 0.3 and G.std() < U.std()


def test_random_exhaustive_covers_evenly(world: World) -> None:
    E = sent_inputs(drive(RandomThief("e", 340, strategy="exhaustive"), world))
    U = sent_inputs(drive(RandomThief("u", 340), world))
    assert len(rows(E)) == 340

    def spread(X: np.ndarray) -> np.ndarray:
        """Per feature: most minus least frequent of the 17 levels."""
        return np.array([np.ptp(np.bincount(X[:, f].astype(int), minlength=17)) for f in range(X.shape[1])])

    # every feature's 17 levels near-equally often, unlike uniform (also in the large Halton bases)
    assert spread(E).max() <= 10 and spread(E).mean() < spread(U).mean() / 2
    assert spread(E[:, 48:]).mean() < spread(U[:, 48:]).mean() / 2


def test_random_systematic_sweeps_one_feature_at_a_time(world: World) -> None:
    thief = RandomThief("s", 64 * 9 + 20, strategy="systematic", levels=9)
    X = sent_inputs(drive(thief, world))
    levels = np.linspace(0, 16, 9)
    base = X[0].copy()
    base[0] = X[9, 0]  # X[0] is the base with feature 0 at the lowest level; X[9] sweeps feature 1
    for i, x in enumerate(X[: 64 * 9]):
        feature = i // 9
        assert x[feature] == levels[i % 9]
        assert np.array_equal(np.delete(x, feature), np.delete(base, feature))
    assert (X[64 * 9 + 1] != base).sum() > 2  # then a new base


def test_random_adversarial_queries_near_the_boundary(world: World) -> None:
    thief = RandomThief("a", 1000, strategy="adversarial", bisections=6)
    X = sent_inputs(drive(thief, world))
    probing = np.array([x.tobytes() not in rows(world.seeds) for x in X])
    assert probing.mean() > 0.8
    victim_margin = margin(world.victim(X[probing]))
    assert victim_margin.mean() < margin(world.victim(world.seeds)).mean() - 0.3
    assert len(set(thief.y[probing].tolist())) >= 5


@pytest.mark.parametrize("model", ["mlp", "logreg"])
@pytest.mark.parametrize("n_classes", [10, 2])
def test_class_gradient_matches_finite_differences(model: str, n_classes: int, digits: Any) -> None:
    X_train, _, y_train, _ = digits
    keep = y_train < 10 if n_classes == 10 else np.isin(y_train, (3, 8))
    clone = train_clone(X_train[keep][:400], y_train[keep][:400], kind=model, low=0.0, high=16.0)
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 16, (6, 64))
    labels = clone.classes_[rng.integers(0, len(clone.classes_), 6)]
    grad = _class_gradient(clone, X, labels)
    column = np.searchsorted(clone.classes_, labels)
    numeric = np.zeros_like(X)
    for j in range(64):
        e = np.zeros(64)
        e[j] = 1e-4
        up, down = clone.predict_proba(X + e), clone.predict_proba(X - e)
        numeric[:, j] = (up[np.arange(6), column] - down[np.arange(6), column]) / 2e-4
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_class_gradient_of_a_regressor_and_degenerate_clones(digits: Any) -> None:
    X_train, _, y_train, _ = digits
    P = np.eye(10)[y_train[:300]] * 0.9 + 0.01
    clone = train_clone(X_train[:300], y_train[:300], P, answers="probabilities", low=0.0, high=16.0)
    x = np.full((1, 64), 5.0)
    grad = _class_gradient(clone, x, np.array([4]))
    e = np.eye(64)[7] * 1e-4

    def out(z: np.ndarray) -> float:
        return float(clone.model.predict(clone.transform(z))[0, 4])

    assert grad[0, 7] == pytest.approx((out(x + e) - out(x - e)) / 2e-4, abs=1e-7)
    assert not _class_gradient(clone, x, np.array([42])).any()  # an unknown label
    constant = train_clone(X_train[:5], np.full(5, 3))
    assert not _class_gradient(constant, x, np.array([3])).any()


def test_jacobian_thief_augments_away_from_its_seeds(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    trainings = []
    real = attackers.train_clone
    monkeypatch.setattr(attackers, "train_clone", lambda *a, **k: trainings.append(1) or real(*a, **k))
    thief = JacobianThief("j", 700, batch=10, substitute="logreg")
    X = sent_inputs(drive(thief, world))
    seeds = rows(world.seeds)
    assert rows(X[:100]) == seeds
    assert not any(x.tobytes() in seeds for x in X[100:])
    assert len(rows(X)) == 700  # nothing sent twice
    assert thief.round == len(trainings) >= 3  # one training per round, not per request

    def nearest_seed(Z: np.ndarray) -> float:
        return float(np.sqrt(((Z[:, None, :] - world.seeds[None]) ** 2).sum(-1)).min(axis=1).mean())

    first, later = nearest_seed(X[100:200]), nearest_seed(X[400:700])
    assert 0 < first < later
    # round 1 is one signed step of lam·(high - low) = 1.6 (2 once rounded, less where clipped) from a seed
    step = np.abs(X[100:200][:, None, :] - X[:100][None]).max(axis=2).min(axis=1)
    assert set(step.tolist()) <= {1.0, 2.0} and 2.0 in step


def test_knockoff_uses_other_data(world: World) -> None:
    other = world.pool[:50] / 2.0
    other_world = World(pool=world.pool, test=world.test, test_labels=world.test_labels, victim=world.victim,
                        n_classes=10, low=0.0, high=16.0, other=other, integer=True)
    X = sent_inputs(drive(KnockoffThief("k", 120), other_world))
    assert rows(X) == rows(np.rint(other))
    derived = sent_inputs(drive(KnockoffThief("k", 300), world))
    natural = rows(world.pool) | rows(world.test) | rows(world.seeds)
    assert np.mean([x.tobytes() in natural for x in derived]) < 0.05
    assert np.abs(derived - world.seeds.mean(axis=0)).mean() < np.abs(derived - 8.0).mean()  # still digit-like
    odd = World(pool=np.zeros((3, 5)), test=np.zeros((1, 5)), test_labels=np.zeros(1), victim=world.victim,
                n_classes=10)
    assert _transformed(np.full((4, 5), 0.5), odd, np.random.default_rng(0)).shape == (4, 5)


@pytest.mark.parametrize("strategy", ["margin", "uncertainty"])
def test_active_learning_picks_uncertain_points(strategy: str, world: World) -> None:
    thief = ActiveLearningThief("al", 400, strategy=strategy, batch=50)
    drive(thief, world)
    picked = np.array(thief.picked)
    assert len(picked) == 300 and len(set(picked.tolist())) == 300
    assert not rows(thief.X) & rows(world.test)
    rng = np.random.default_rng(0)
    random = rng.choice(len(thief.pool), size=300, replace=False)
    # against the victim itself, and against a substitute the thief never used
    victim_margin = margin(world.victim(thief.pool))
    assert victim_margin[picked].mean() < victim_margin[random].mean() - 0.05
    other = train_clone(thief.X[:100], thief.y[:100], kind="mlp", low=0.0, high=16.0, seed=5)
    other_margin = margin(other.predict_proba(thief.pool))
    assert other_margin[picked].mean() < other_margin[random].mean() - 0.05


def test_adaptive_paces_under_the_quota(world: World) -> None:
    quota = FixedWindow(world, limit=50, window=60.0)
    thief = AdaptiveThief("ad", 1000, batch=10, interval=0.01)
    log = drive(thief, world, quota)
    assert quota.refused == 0 and thief.refused == 0
    assert thief.sent == 1000
    assert max(quota.used.values()) <= 50
    assert log[-1][0] >= (1000 / 50 - 1) * 60.0  # it waited for the windows to reset
    # a tight remaining budget: smaller batches, or a wait, never a 429
    tight = FixedWindow(world, limit=25, window=3600.0)
    slow = AdaptiveThief("ad2", 200, batch=10, interval=0.01)
    log = drive(slow, world, tight)
    assert tight.refused == 0 and slow.sent == 200
    assert 5 in {len(r.inputs) for _, r, _ in log}
    assert log[-1][0] >= 7 * 3600.0


def test_adaptive_mixes_in_natural_inputs(world: World) -> None:
    thief = AdaptiveThief("ad", 2000, batch=20)
    X = sent_inputs(drive(thief, world))
    natural = np.array([x.tobytes() in rows(world.seeds) for x in X])
    assert 0.07 < natural.mean() < 0.13
    assert np.array_equal(natural, np.array(thief.cover))
    assert np.mean([natural[i:i + 20].any() for i in range(0, 2000, 20)]) > 0.6  # mixed into the batches


def test_copycat_sends_only_the_benign_pool_and_paces_under_the_quota(world: World) -> None:
    quota = FixedWindow(world, limit=100, window=60.0)
    thief = make_actor({"kind": "copycat", "name": "cc", "budget": 600, "batch": 10})
    X = sent_inputs(drive(thief, world, quota))
    pool, seeds = rows(world.pool), rows(world.seeds)
    assert len(X) == 600 and quota.refused == 0 and all(x.tobytes() in pool for x in X)
    assert not any(x.tobytes() in seeds for x in X)  # the pool benign users draw from, not a thief's seeds
    assert len({x.tobytes() for x in X}) >= 0.9 * min(600, len(pool))  # the whole pool, as a heavy user


def test_adaptive_assumes_a_rate_without_headers(world: World) -> None:
    thief = AdaptiveThief("ad", 300, batch=10, rate=2.0)
    log = drive(thief, world)
    assert all(r.delay >= len(r.inputs) / 2.0 for _, r, _ in log)
    assert thief.params["rate"] == 2.0


def test_low_and_slow(world: World) -> None:
    thief = LowAndSlowThief("ls", 300)
    log = drive(thief, world)
    sizes = Counter(len(r.inputs) for _, r, _ in log)
    assert set(sizes) == {1, 2}
    assert 400 < np.mean([r.delay for _, r, _ in log]) < 800
    assert log[-1][0] > DAY  # 300 inputs take more than a simulated day


# -- natural images of another domain, mixed and data-free thieves ---------------------


def test_photographs_are_loaded_once_and_grey() -> None:
    photos = photographs()
    assert len(photos) == 2 and all(p.ndim == 2 and 0.0 <= p.min() < p.max() <= 1.0 for p in photos)
    assert photographs()[0] is photos[0]  # cached


def test_natural_patches_are_not_digits(world: World) -> None:
    thief = NaturalPatchThief("np", 500, batch=50)
    X = sent_inputs(drive(thief, world))
    assert X.min() == world.low and X.max() == world.high and np.array_equal(X, np.rint(X))
    assert not rows(X) & (rows(world.pool) | rows(world.seeds) | rows(world.test))
    digits = np.concatenate([world.pool, world.seeds])
    # digits have a dark border (the first and last columns) and ink in the middle; photographs do not
    border = np.r_[0:64:8, 7:64:8]
    assert X[:, border].mean() > digits[:, border].mean() + 3.0
    # photographs are smooth: neighbouring pixels differ less than in digits, relative to the spread
    def roughness(Z: np.ndarray) -> float:
        images = Z.reshape(-1, 8, 8)
        return float(np.abs(np.diff(images, axis=2)).mean() / Z.std())
    assert roughness(X) < roughness(digits)
    # the nearest digit of a patch is farther than a digit's nearest other digit
    def nearest(A: np.ndarray, B: np.ndarray) -> np.ndarray:
        d = ((A[:, None, :] - B[None]) ** 2).sum(axis=2)
        return np.sqrt(np.where(d > 0, d, np.inf).min(axis=1))
    assert np.median(nearest(X[:200], digits)) > np.median(nearest(world.pool[:200], digits))


def test_natural_patches_of_other_shapes(world: World) -> None:
    flat = World(pool=np.zeros((3, 10)), test=np.zeros((1, 10)), test_labels=np.zeros(1), victim=world.victim,
                 n_classes=10, low=-1.0, high=1.0)
    X = natural_patches(30, flat, np.random.default_rng(0))
    assert X.shape == (30, 10) and X.min() >= -1.0 and X.max() <= 1.0 and len(rows(X)) == 30
    wide = World(pool=np.zeros((3, 1000)), test=np.zeros((1, 1000)), test_labels=np.zeros(1), victim=world.victim,
                 n_classes=10)
    assert natural_patches(3, wide, np.random.default_rng(0), stretch=False).shape == (3, 1000)


def test_natural_patches_balanced_spreads_the_labels(world: World) -> None:
    runs = {s: drive(NaturalPatchThief("np", 1000, strategy=s, step=100, pool_size=1500, batch=50), world, seed=4)
            for s in ("random", "balanced")}
    counts = {s: np.bincount(np.concatenate([a.labels for _, _, a in log]), minlength=10)
              for s, log in runs.items()}
    # the label-balanced choice makes the answers less dominated by the most common class
    assert counts["balanced"].max() < counts["random"].max() - 50
    def entropy(c: np.ndarray) -> float:
        p = c[c > 0] / c.sum()
        return float(-(p * np.log(p)).sum())
    assert entropy(counts["balanced"]) > entropy(counts["random"]) + 0.1


@pytest.mark.parametrize("real", [0.3, 0.4, 0.5])
def test_mixed_real_share(real: float, world: World) -> None:
    thief = MixedThief("mx", 1000, real=real, batch=20)
    X = sent_inputs(drive(thief, world))
    natural = np.array([x.tobytes() in rows(world.seeds) for x in X])
    assert abs(natural.mean() - real) <= 0.01
    assert np.array_equal(natural, np.array(thief.is_real))
    assert np.mean([0 < natural[i:i + 20].sum() < 20 for i in range(0, 1000, 20)]) > 0.9  # mixed in every batch
    assert len(rows(X[natural])) == min(natural.sum(), len(world.seeds))  # without replacement until used up


def test_mixed_with_patches(world: World) -> None:
    thief = MixedThief("mx", 400, source="natural-patches", batch=20)
    X = sent_inputs(drive(thief, world))
    real = np.array(thief.is_real)
    assert abs(real.mean() - 0.4) <= 0.01
    assert not rows(X[~real]) & rows(world.seeds)
    border = np.r_[0:64:8, 7:64:8]
    assert X[~real][:, border].mean() > X[real][:, border].mean() + 3.0  # the rest are photographs


def test_data_free_raises_the_clone_entropy(world: World) -> None:
    thief = DataFreeThief("df", 1200, batch=50)
    drive(thief, world)
    assert thief.sent == 1200 and len(thief.entropy) >= 5
    noise, generated = np.array(thief.entropy).T
    assert (generated > noise).all() and generated.mean() > 1.3 * noise.mean()
    assert not rows(thief.X) & (rows(world.pool) | rows(world.seeds) | rows(world.test))  # no natural data
    # its last clone is unsure on its last queries, more than on fresh noise
    assert thief.clone is not None
    last = thief.X[-100:]
    fresh = np.random.default_rng(1).integers(0, 17, last.shape).astype(float)
    assert _entropy_gradient(thief.clone, last)[0].mean() > _entropy_gradient(thief.clone, fresh)[0].mean()


def test_entropy_gradient_matches_finite_differences(digits: Any) -> None:
    X_train, _, y_train, _ = digits
    clone = train_clone(X_train[:300], y_train[:300], kind="mlp", low=0.0, high=16.0, hidden=16, seed=0)
    x = X_train[300:303].astype(float)
    _, grad = _entropy_gradient(clone, x)
    eps = 1e-4
    for j in (10, 27, 44):
        step = np.zeros_like(x)
        step[:, j] = eps
        numeric = (_entropy_gradient(clone, x + step)[0] - _entropy_gradient(clone, x - step)[0]) / (2 * eps)
        assert np.allclose(grad[:, j], numeric, atol=1e-5)
    constant = train_clone(X_train[:5], np.full(5, 3), low=0.0, high=16.0)
    h, g = _entropy_gradient(constant, x)
    assert not g.any() and np.allclose(h, 0.0)
