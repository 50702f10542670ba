"""The population reference: ADD fitted on pooled account traffic, no owner data."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from flask_modelguard.detectors.add import Reference, add_score
from flask_modelguard.detectors.population import PopulationSample, _balanced, fit_population
from flask_modelguard.state import AccountState, Observation, class_features


def _ratio(reference: Reference, X: np.ndarray, labels: list[Any]) -> float:
    """An account's ADD score over its threshold."""
    state = AccountState(X.shape[1])
    state.update(Observation(0.0, [], X, labels, []))
    score, limit = add_score(state, reference), reference.threshold(state.distinct)
    assert score is not None and limit
    return score / limit


# -- the sample -----------------------------------------------------------------------


def _gaussian_rows(rng: np.random.Generator, n: int, dim: int = 24) -> tuple[np.ndarray, list[int]]:
    centres = np.random.default_rng(99).normal(0.0, 4.0, (5, dim))
    y = rng.integers(0, 5, n)
    return centres[y] + rng.normal(0.0, 1.0, (n, dim)), y.tolist()


def test_a_heavy_account_is_capped_at_max_share() -> None:
    rng = np.random.default_rng(0)
    sample = PopulationSample(capacity=4000, max_share=1 / 8)
    for a in range(20):
        sample.add(f"b{a}", *_gaussian_rows(rng, 100))
    for _ in range(10):  # 10x a benign user's traffic, in requests of 100
        sample.add("thief", *_gaussian_rows(rng, 100))
    counts = sample.counts()
    assert counts["thief"] == 500 == sample.capacity * sample.max_share
    assert all(counts[f"b{a}"] == 100 for a in range(20))
    assert len(sample) == 2500 and sample.accounts == 21
    # In the fit, the share holds of the rows used, not only of the capacity.
    _, _, owners = sample.rows()
    used = [owners[i] for i in _balanced(owners, sample.max_share)]
    assert used.count("thief") <= sample.max_share * len(used) and used.count("b0") == 100


def test_a_full_sample_evicts_from_the_largest_holder() -> None:
    rng = np.random.default_rng(1)
    sample = PopulationSample(capacity=400, max_share=1 / 4)
    for a in range(4):
        sample.add(a, *_gaussian_rows(rng, 100))
    assert len(sample) == 400
    sample.add("new", *_gaussian_rows(rng, 50))
    assert len(sample) == 400 and sample.counts()["new"] == 50
    assert sorted(sample.counts()[a] for a in range(4)) == [87, 87, 88, 88]
    X, labels = _gaussian_rows(rng, 30)
    sample.add(0, X, labels)  # below its cap, but once it is the largest holder it replaces its own rows
    assert sample.counts() == {0: 88, 1: 87, 2: 87, 3: 88, "new": 50}
    rows, _, owners = sample.rows()
    assert owners[-30:] == [0] * 30 and np.array_equal(rows[-30:], class_features(X).astype(np.float32))


def test_an_account_keeps_its_latest_rows() -> None:
    rng = np.random.default_rng(6)
    sample = PopulationSample(capacity=400, max_share=1 / 4)
    X, labels = _gaussian_rows(rng, 150)
    for start in range(0, 150, 10):  # one request at a time: the cap is applied row by row
        sample.add("a", X[start : start + 10], labels[start : start + 10])
    rows, names, owners = sample.rows()
    assert len(sample) == 100 and owners == ["a"] * 100 and names == [str(y) for y in labels[50:]]
    assert np.array_equal(rows, class_features(X[50:]).astype(np.float32))


def test_not_ready_until_enough_accounts_and_rows() -> None:
    rng = np.random.default_rng(2)
    sample = PopulationSample()
    for a in range(7):
        sample.add(a, *_gaussian_rows(rng, 100))
    fit = fit_population(sample, min_accounts=8)
    assert not fit and fit.reference is None and "7 accounts" in fit.reason
    sample.add(7, *_gaussian_rows(rng, 10))
    fit = fit_population(sample, min_accounts=8, min_rows=1000)
    assert not fit and "710 rows" in fit.reason


def test_round_trip_is_exact_and_continues_alike() -> None:
    rng = np.random.default_rng(3)
    sample = PopulationSample(capacity=300, max_share=0.25, space="digits/hidden:64")
    for a in range(6):
        sample.add(a if a % 2 else f"acct-{a}", *_gaussian_rows(rng, 70))
    data = sample.to_dict()
    copy = PopulationSample.from_dict(json.loads(json.dumps(data)))
    assert copy.to_dict() == data and copy.nbytes() == sample.nbytes() and copy.counts() == sample.counts()
    more = _gaussian_rows(rng, 40)
    for s in (sample, copy):
        s.add("late", *more)
        s.add(1, *more)
    assert copy.to_dict() == sample.to_dict()
    assert PopulationSample.from_dict(PopulationSample().to_dict()).to_dict() == PopulationSample().to_dict()


def test_merge_adds_the_other_samples_accounts() -> None:
    rng = np.random.default_rng(4)
    parts = [_gaussian_rows(rng, 60) for _ in range(4)]
    left, right, whole = PopulationSample(), PopulationSample(), PopulationSample()
    for a, (X, y) in enumerate(parts):
        (left if a < 2 else right).add(a, X, y)
        whole.add(a, X, y)
    left.merge(right)
    assert left.to_dict() == whole.to_dict()
    with pytest.raises(ValueError):
        left.merge(PopulationSample().add("x", np.zeros((2, 5)), [0, 1]))


def test_constructed_population_flags_off_distribution_accounts() -> None:
    """Gaussian classes; two thieves (wide noise, shifted data) among ten accounts."""
    rng = np.random.default_rng(5)
    sample = PopulationSample()
    for a in range(8):
        sample.add(a, *_gaussian_rows(rng, 150))
    noise = rng.normal(0.0, 6.0, (600, 24)), rng.integers(0, 5, 600).tolist()
    X, y = _gaussian_rows(rng, 600)
    shifted = X + 3.0, y
    sample.add("noise", *noise)
    sample.add("shifted", *shifted)
    results, trimmed = {}, {}
    for trim in (0.25, 0.0):
        fit = fit_population(sample, trim=trim, accounts=60)  # fewer simulated accounts: faster
        assert fit.reference is not None and fit.accounts == 10
        trimmed[trim] = {account for account, _ in fit.trimmed}
        results[trim] = [_ratio(fit.reference, *thief_rows) for thief_rows in
                         ((noise[0][:50], noise[1][:50]), (shifted[0][:50], shifted[1][:50]))]
        benign = [_ratio(fit.reference, *_gaussian_rows(rng, 50)) for _ in range(20)]
        assert sum(r > 1 for r in benign) <= 1
    assert trimmed == {0.25: {"noise", "shifted"}, 0.0: set()}
    assert min(results[0.25]) > 1
    assert all(t > u for t, u in zip(results[0.25], results[0.0]))


# -- the example's digits ------------------------------------------------------------


class Digits:
    """The example model, held-out digits split into a population half and a
    fresh half, and the thieves' inputs."""

    def __init__(self, cache_dir: str) -> None:
        from sklearn.datasets import load_sample_images

        from example_app.model import load_model, split

        self.model = load_model(cache_dir)
        _, X_test, _, _ = split()
        order = np.random.default_rng(0).permutation(len(X_test))
        self.pool, self.fresh = X_test[order[:270]], X_test[order[270:]]
        self.photos = [image.mean(axis=2) for image in load_sample_images().images]
        self.rng = np.random.default_rng(7)

    def account(self, X: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Features (the hidden activations, as the example's guard uses) and labels."""
        return np.asarray([self.model.features(x) for x in X]), self.model.predict_proba(X).argmax(axis=1).tolist()

    def digits(self, source: np.ndarray, n: int) -> np.ndarray:
        return source[self.rng.choice(len(source), n, replace=False)]

    def uniform(self, n: int) -> np.ndarray:
        return self.rng.integers(0, 17, size=(n, 64)).astype(np.float64)

    def patches(self, n: int) -> np.ndarray:
        """Grey 32x32 crops of the sample photographs, averaged down to 8x8, in 0..16."""
        out = []
        for _ in range(n):
            photo = self.photos[self.rng.integers(len(self.photos))]
            r, c = self.rng.integers(0, photo.shape[0] - 32), self.rng.integers(0, photo.shape[1] - 32)
            out.append(np.round(photo[r : r + 32, c : c + 32].reshape(8, 4, 8, 4).mean(axis=(1, 3)) / 255 * 16))
        return np.asarray(out).reshape(n, 64)


@pytest.fixture(scope="module")
def digits(model_cache: str) -> Digits:
    return Digits(model_cache)


Thieves = dict[str, tuple[np.ndarray, list[int]]]


def _population(digits: Digits, benign: int, seed: int) -> tuple[PopulationSample, Thieves]:
    """``benign`` accounts of 100 held-out digits and two thieves of 1,000 queries each
    (the draws that follow are seeded too, whatever ran before)."""
    digits.rng = np.random.default_rng(seed)
    sample = PopulationSample(space="example/hidden")
    for a in range(benign):
        sample.add(f"user{a}", *digits.account(digits.digits(digits.pool, 100)))
    thieves = {"uniform": digits.account(digits.uniform(1000)), "photos": digits.account(digits.patches(1000))}
    for name, (X, y) in thieves.items():
        for start in range(0, 1000, 50):
            sample.add(name, X[start : start + 50], y[start : start + 50])
    return sample, thieves


def test_digits_population_flags_noise_and_photos(digits: Digits) -> None:
    sample, thieves = _population(digits, benign=20, seed=1)
    assert sample.counts()["uniform"] == 500 and sample.accounts == 22
    fit = fit_population(sample)
    assert fit.reference is not None and fit.reference.space == "example/hidden"
    assert {account for account, _ in fit.trimmed[:2]} == {"uniform", "photos"}
    for n in (50, 100):
        for X, y in thieves.values():  # the thieves' own first n queries
            assert _ratio(fit.reference, X[:n], y[:n]) > 1
        fresh = [_ratio(fit.reference, *digits.account(digits.digits(digits.fresh, n))) for _ in range(20)]
        assert sum(r > 1 for r in fresh) <= 1


def test_digits_trimming_matters_with_thieves_at_a_fifth_of_accounts(digits: Digits) -> None:
    sample, thieves = _population(digits, benign=8, seed=2)
    ratios = {}
    for trim in (0.25, 0.0):
        reference = fit_population(sample, trim=trim, accounts=60).reference
        assert reference is not None
        ratios[trim] = [_ratio(reference, X[:50], y[:50]) for X, y in thieves.values()]
    # Untrimmed, the thieves pull the reference: at 50 queries they sit at 0.6-1.05x
    # the threshold over seeds (mostly missed); trimmed, at 2.1-3.9x (caught).
    assert min(ratios[0.25]) > 1 > min(ratios[0.0])
    assert all(t > 2 * u for t, u in zip(ratios[0.25], ratios[0.0]))
