"""Mergeable statistics: merging partial states equals one pass over everything."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_modelguard.stats import Buckets, Histogram, Moments

matrices = st.integers(1, 40).flatmap(
    lambda n: st.lists(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3), min_size=n, max_size=n)
)


@settings(max_examples=60, deadline=None)
@given(matrices, st.integers(0, 40), st.booleans())
def test_merge_equals_one_pass(rows, cut, diagonal):
    X = np.asarray(rows)
    cut = min(cut, len(X))
    whole = Moments(3, diagonal).update(X)
    a = Moments(3, diagonal).update(X[:cut])
    b = Moments(3, diagonal).update(X[cut:])
    merged = a.merge(b)
    assert merged.n == len(X)
    np.testing.assert_allclose(merged.mean, X.mean(axis=0), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-7, atol=1e-3)
    if len(X) >= 2:
        expected = np.cov(X, rowvar=False)
        np.testing.assert_allclose(merged.cov(), np.diag(np.diag(expected)) if diagonal else expected, rtol=1e-7, atol=1e-3)


def test_many_process_states_merge_in_any_order():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 5)) * [1, 2, 3, 4, 5] + 7
    parts = [Moments(5).update(chunk) for chunk in np.array_split(X, 7)]
    forward, backward = Moments(5), Moments(5)
    for p in parts:
        forward.merge(p)
    for p in reversed(parts):
        backward.merge(p)
    for m in (forward, backward):
        np.testing.assert_allclose(m.cov(), np.cov(X, rowvar=False), rtol=1e-10)


def test_moments_round_trip_and_shape_checks():
    m = Moments(4).update(np.arange(20.0).reshape(5, 4) ** 1.5)
    again = Moments.from_dict(m.to_dict())
    np.testing.assert_allclose(again.cov(), m.cov())
    assert Moments(4, diagonal=True).from_dict(Moments(4, True).update(np.ones((2, 4))).to_dict()).n == 2
    with pytest.raises(ValueError):
        m.update(np.ones((2, 3)))
    with pytest.raises(ValueError):
        m.merge(Moments(4, diagonal=True))
    assert Moments(4).cov().sum() == 0


def test_histograms_merge_and_entropy():
    labels = Histogram().update([1, 1, 2, 3])
    assert labels.merge(Histogram().update([3, 3])).counts == {1: 2, 2: 1, 3: 3}
    assert Histogram().update([0, 1, 2, 3]).entropy() == pytest.approx(2.0)
    assert Histogram().update([5] * 10).entropy() == 0.0
    conf = Histogram(edges=(0.5, 0.9)).update([0.1, 0.6, 0.95, 0.99])
    assert conf.counts == {0: 1, 1: 1, 2: 2}
    assert Histogram.from_dict(conf.to_dict()) == conf
    with pytest.raises(ValueError):
        conf.merge(Histogram())


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-50, 3000), st.integers(1, 5)), max_size=60), st.integers(0, 60),
       st.integers(-60, 3100))
def test_buckets_merge_and_trim_like_a_dict(pairs, cut, through):
    expected: dict[int, int] = {}
    for key, count in pairs:
        expected[key] = expected.get(key, 0) + count
    whole, a, b = Buckets(), Buckets(), Buckets()
    for i, (key, count) in enumerate(pairs):  # arrival order, not key order
        whole.add(key, count)
        (a if i < cut else b).add(key, count)
    assert whole.as_dict() == expected == a.merge(b).as_dict()
    assert len(whole) == (max(expected) - min(expected) + 1 if expected else 0)  # a dense span
    whole.drop_through(through)
    assert whole.as_dict() == {k: c for k, c in expected.items() if k > through}
    assert not whole.as_dict() or whole.first == min(whole.as_dict())
    assert Buckets(whole.as_dict()).as_dict() == whole.as_dict()


def test_packed_arrays_round_trip_and_states_stored_as_lists_still_read() -> None:
    from flask_modelguard.stats import pack, unpack

    values = np.array([0.1, -2.5e300, 3.0, 1e-310])
    assert np.array_equal(unpack(pack(values)), values)  # bit for bit
    hashes = np.array([2**64 - 1, 0, 12345], dtype=np.uint64)
    assert np.array_equal(unpack(pack(hashes, "<u8"), "<u8"), hashes)
    assert np.array_equal(unpack([0.1, 3.0]), np.array([0.1, 3.0]))  # a state written before packing
    m = Moments(3, diagonal=True)
    m.update(np.array([[1.0, 2.0, 3.0], [2.0, 0.0, 1.0]]))
    old = {**m.to_dict(), "mean": m.mean.tolist(), "m2": m.m2.tolist()}
    assert np.array_equal(Moments.from_dict(old).mean, Moments.from_dict(m.to_dict()).mean)
    with pytest.raises(ValueError):
        Moments.from_dict({**m.to_dict(), "mean": pack(np.zeros(2))})


def test_binned_histogram_counts_as_searchsorted_does_with_edges_and_nan():
    edges = (0.5, 0.9, 0.99)
    values = [0.1, 0.5, np.nextafter(0.5, 1.0), 0.9, 0.95, 0.99, 1.0, float("nan"), float("inf"), -float("inf"), "0.95"]
    expected: dict[int, int] = {}
    for b in np.searchsorted(np.asarray(edges), np.asarray(values, dtype=float), side="right").tolist():
        expected[b] = expected.get(b, 0) + 1
    assert Histogram(edges=edges).update(values).counts == expected
    assert expected[3] == 4  # an edge value goes right; NaN and +inf go to the open last bin
