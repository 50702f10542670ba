"""Property tests of the output transforms (flask_modelguard.transforms)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flask_modelguard import transforms as T
from flask_modelguard.exc import InvalidValue
from flask_modelguard.transforms import (
    Answer,
    GaussianNoise,
    HighConfidence,
    KeyedRandom,
    LabelOnly,
    LaplaceNoise,
    Misinformation,
    ProbabilityMark,
    RandomPoison,
    Renormalise,
    ReverseSigmoid,
    Round,
    TopK,
    Watermark,
    apply,
    parse,
    parse_all,
)

KEY = b"test-secret-key-0123456789abcdef"
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- strategies


@st.composite
def prob_matrices(draw: st.DrawFn, positive: bool = False, min_k: int = 2) -> np.ndarray:
    """(n, k) row-stochastic matrices, n in 1..8, k in min_k..12. Entries may be
    exactly 0 (one-hot rows included) unless ``positive``."""
    n = draw(st.integers(1, 8))
    k = draw(st.integers(min_k, 12))
    if positive:
        elements = st.floats(1e-3, 1.0)
    else:
        elements = st.one_of(st.just(0.0), st.floats(1e-6, 1.0))
    raw = draw(hnp.arrays(np.float64, (n, k), elements=elements)).copy()
    empty = raw.sum(axis=1) == 0
    raw[empty, draw(st.integers(0, k - 1))] = 1.0
    return raw / raw.sum(axis=1, keepdims=True)


def rng_for(n: int, account: int | str = 7, salt: str = "fp", score: float = 0.0, key: bytes = KEY) -> KeyedRandom:
    return KeyedRandom.for_inputs(key, account, [f"{salt}-{i}" for i in range(n)], score)


# One or more configured instances of every registered transform.
CASES: list[tuple[str, T.Transform]] = [
    ("round2", Round(2)),
    ("round0", Round(0)),
    ("round4", Round(4)),
    ("topk1", TopK(1)),
    ("topk3", TopK(3)),
    ("topk3_drop", TopK(3, mode="drop")),
    ("topk2_renorm", TopK(2, renormalise=True)),
    ("topk20_drop_renorm", TopK(20, mode="drop", renormalise=True)),
    ("label_only", LabelOnly()),
    ("high_conf", HighConfidence()),
    ("high_conf_09", HighConfidence(0.9)),
    ("gaussian", GaussianNoise(0.05)),
    ("gaussian_free", GaussianNoise(0.3, keep_argmax=False)),
    ("laplace", LaplaceNoise(0.05)),
    ("laplace_free", LaplaceNoise(0.2, keep_argmax=False)),
    ("reverse_sigmoid", ReverseSigmoid()),
    ("reverse_sigmoid_free", ReverseSigmoid(beta=0.7, gamma=0.2, keep_argmax=False)),
    ("renormalise", Renormalise()),
    ("poison_half", RandomPoison(0.5)),
    ("poison_all", RandomPoison(1.0)),
    ("misinformation", Misinformation(1.0)),
    ("misinformation_weak", Misinformation(0.3)),
    ("misinformation_adaptive", Misinformation(0.2, adaptive=True)),
    ("watermark_half", Watermark(0.5)),
    ("watermark_all", Watermark(1.0)),
    ("probability_mark", ProbabilityMark(0.1)),
    ("probability_mark_max", ProbabilityMark(0.5)),
]
IDS = [c[0] for c in CASES]
TRANSFORMS = [c[1] for c in CASES]

DISTRIBUTION = (GaussianNoise, LaplaceNoise, ReverseSigmoid, Renormalise, RandomPoison, Misinformation, Watermark,
                ProbabilityMark)


def test_cases_cover_the_whole_registry() -> None:
    assert {type(t) for t in TRANSFORMS} == set(T.REGISTRY.values())
    assert T.REGISTRY["renormalize"] is Renormalise


def keeps_labels(t: T.Transform) -> bool:
    return type(t).keeps_argmax and getattr(t, "keep_argmax", True)


# --------------------------------------------------------------------------- invariants of every transform


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
@PROPS
@given(probs=prob_matrices(), score=st.floats(0.0, 1.0))
def test_invariants(transform: T.Transform, probs: np.ndarray, score: float) -> None:
    n, k = probs.shape
    before = Answer.of(probs)
    out = transform(before, rng_for(n, score=score))
    p = out.probs

    # shapes, finiteness, range
    assert p.shape == (n, k)
    assert out.labels.shape == (n,)
    assert np.issubdtype(out.labels.dtype, np.integer)
    assert ((out.labels >= 0) & (out.labels < k)).all()
    assert np.isfinite(p).all()
    assert (p >= 0.0).all() and (p <= 1.0 + 1e-12).all()
    if out.keep is not None:
        assert out.keep.shape == (n, k) and out.keep.dtype == bool
    # the input is never modified in place
    np.testing.assert_array_equal(before.probs, probs)

    # sums
    sums = p.sum(axis=1)
    if isinstance(transform, DISTRIBUTION) or (isinstance(transform, TopK) and transform.renormalise):
        np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-9)
    elif isinstance(transform, Round):
        assert (np.abs(sums - 1.0) <= 10.0 ** -transform.decimals * k / 2 + 1e-9).all()
    elif isinstance(transform, (TopK, HighConfidence)):
        assert (sums <= 1.0 + 1e-9).all()  # a sub-distribution
        assert (sums > 0).all()  # the served entry is always kept
    else:  # label_only leaves the vector alone
        np.testing.assert_array_equal(p, probs)

    # the served label is always a top entry
    rows = np.arange(n)
    np.testing.assert_array_equal(p[rows, out.labels], p.max(axis=1))
    if keeps_labels(transform):
        np.testing.assert_array_equal(out.labels, before.labels)
    elif isinstance(transform, (GaussianNoise, LaplaceNoise, ReverseSigmoid)):
        np.testing.assert_array_equal(out.labels, p.argmax(axis=1))


@pytest.mark.parametrize("transform", TRANSFORMS, ids=IDS)
@PROPS
@given(probs=prob_matrices(), account=st.integers(0, 10**6), score=st.floats(0.0, 1.0))
def test_deterministic_and_row_independent(transform: T.Transform, probs: np.ndarray, account: int, score: float) -> None:
    n = len(probs)
    first = transform(Answer.of(probs), rng_for(n, account, score=score))
    again = transform(Answer.of(probs.copy()), rng_for(n, account, score=score))
    np.testing.assert_array_equal(first.probs, again.probs)
    np.testing.assert_array_equal(first.labels, again.labels)
    # each row depends only on its own probabilities and fingerprint, not on the batch
    last = transform(Answer.of(probs[-1:]), KeyedRandom.for_inputs(KEY, account, [f"fp-{n - 1}"], score))
    np.testing.assert_array_equal(last.probs[0], first.probs[-1])
    assert last.labels[0] == first.labels[-1]


# --------------------------------------------------------------------------- keyed randomness


def test_keyed_random_uniform_is_open_interval_and_pure() -> None:
    rng = rng_for(50)
    u = rng.uniform("x", 40)
    assert u.shape == (50, 40)
    assert ((u > 0) & (u < 1)).all()
    np.testing.assert_array_equal(u, rng_for(50).uniform("x", 40))
    np.testing.assert_array_equal(u[:, :7], rng.uniform("x", 7))  # a prefix of the same stream
    assert not np.array_equal(u, rng.uniform("y", 40))
    assert abs(u.mean() - 0.5) < 0.02
    assert np.isfinite(rng.normal("n", 40)).all()
    assert np.isfinite(rng.laplace("l", 40)).all()


FIXED = np.array([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]])


@pytest.mark.parametrize("noise", [GaussianNoise(0.05), LaplaceNoise(0.05)], ids=["gaussian", "laplace"])
def test_noise_depends_on_account_fingerprint_and_key(noise: T.Transform) -> None:
    base = noise(Answer.of(FIXED), rng_for(2, account=1)).probs
    assert not np.allclose(base, FIXED)  # noise was added
    same = noise(Answer.of(FIXED), rng_for(2, account=1)).probs
    np.testing.assert_array_equal(base, same)
    other_account = noise(Answer.of(FIXED), rng_for(2, account=2)).probs
    other_fp = noise(Answer.of(FIXED), rng_for(2, account=1, salt="other")).probs
    other_key = noise(Answer.of(FIXED), rng_for(2, account=1, key=b"another key")).probs
    for other in (other_account, other_fp, other_key):
        assert not np.allclose(base[0], other[0])
        assert not np.allclose(base[1], other[1])


def test_account_int_and_str_share_a_seed() -> None:
    assert rng_for(3, account=5).seeds == rng_for(3, account="5").seeds
    assert rng_for(3, account=5).seeds != rng_for(3, account=6).seeds


# --------------------------------------------------------------------------- individual transforms


@PROPS
@given(probs=prob_matrices(), decimals=st.integers(0, 6))
def test_round_is_numpy_round(probs: np.ndarray, decimals: int) -> None:
    out = Round(decimals)(Answer.of(probs), rng_for(len(probs)))
    np.testing.assert_array_equal(out.probs, np.round(probs, decimals))
    assert out.keep is None and not out.label_only


@PROPS
@given(probs=prob_matrices(), k=st.integers(1, 14), renorm=st.booleans())
def test_top_k_keeps_exactly_k_including_the_label(probs: np.ndarray, k: int, renorm: bool) -> None:
    n, classes = probs.shape
    before = Answer.of(probs)
    dropped = TopK(k, mode="drop", renormalise=renorm)(before, rng_for(n))
    zeroed = TopK(k, mode="zero", renormalise=renorm)(before, rng_for(n))
    keep = dropped.keep
    assert keep is not None
    assert zeroed.keep is None
    assert (keep.sum(axis=1) == min(k, classes)).all()
    assert keep[np.arange(n), before.labels].all()
    # the kept entries are the largest ones
    for i in range(n):
        kept, rest = probs[i][keep[i]], probs[i][~keep[i]]
        if rest.size:
            assert kept.min() >= rest.max()
    np.testing.assert_array_equal(dropped.probs, zeroed.probs)
    if renorm:
        np.testing.assert_allclose(zeroed.probs, probs * keep / (probs * keep).sum(axis=1, keepdims=True), atol=1e-12)
    else:
        np.testing.assert_array_equal(zeroed.probs, np.where(keep, probs, 0.0))


def test_top_k_drop_masks_intersect() -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.4]])
    a = Answer.of(probs)
    narrow_then_wide = apply([TopK(1, mode="drop"), TopK(3, mode="drop")], a, rng_for(1))
    wide_then_narrow = apply([TopK(3, mode="drop"), TopK(1, mode="drop")], a, rng_for(1))
    assert narrow_then_wide.keep.tolist() == [[False, False, False, True]]
    assert wide_then_narrow.keep.tolist() == [[False, False, False, True]]
    # mode zero keeps an existing drop mask
    zero_after_drop = apply([TopK(2, mode="drop"), TopK(1)], a, rng_for(1))
    assert zero_after_drop.keep.tolist() == [[False, False, True, True]]
    assert zero_after_drop.probs.tolist() == [[0.0, 0.0, 0.0, 0.4]]


def test_top_k_with_tied_served_label_keeps_exactly_k() -> None:
    # e.g. watermark -> round(1) can give a served label that ties with a lower index
    answer = Answer(np.array([[0.4, 0.4, 0.2]]), np.array([1]))
    out = TopK(1, mode="drop")(answer, rng_for(1))
    assert out.keep[0, 1]
    assert out.keep.sum() == 1


def test_top_k_rejects_bad_settings() -> None:
    with pytest.raises(InvalidValue):
        TopK(0)
    with pytest.raises(InvalidValue):
        TopK(2, mode="chop")


@PROPS
@given(probs=prob_matrices())
def test_label_only_sets_the_flag_only(probs: np.ndarray) -> None:
    before = Answer.of(probs)
    out = LabelOnly()(before, rng_for(len(probs)))
    assert out.label_only and not before.label_only
    np.testing.assert_array_equal(out.probs, probs)
    np.testing.assert_array_equal(out.labels, before.labels)
    assert out.keep is None


@PROPS
@given(probs=prob_matrices(), cutoff=st.floats(0.0, 1.0))
def test_high_confidence_zeroes_below_cutoff_except_the_label(probs: np.ndarray, cutoff: float) -> None:
    before = Answer.of(probs)
    out = HighConfidence(cutoff)(before, rng_for(len(probs))).probs
    rows = np.arange(len(probs))
    np.testing.assert_array_equal(out[rows, before.labels], probs[rows, before.labels])
    others = np.ones_like(probs, dtype=bool)
    others[rows, before.labels] = False
    np.testing.assert_array_equal(out[others], np.where(probs >= cutoff, probs, 0.0)[others])


@PROPS
@given(probs=prob_matrices())
def test_renormalise_is_idempotent_and_rescales(probs: np.ndarray) -> None:
    scaled = probs * 3.0
    out = Renormalise()(Answer.of(scaled), rng_for(len(probs))).probs
    np.testing.assert_allclose(out, probs, atol=1e-12)
    zeros = T.renormalise(np.zeros((2, 4)))
    np.testing.assert_array_equal(zeros, np.full((2, 4), 0.25))


# --------------------------------------------------------------------------- poison


@PROPS
@given(probs=prob_matrices(), score=st.floats(0.0, 1.0))
def test_poison_p0_changes_nothing_and_p1_reorders_every_row(probs: np.ndarray, score: float) -> None:
    """Poisoned rows hold the answer's own values in another order: the
    served class is random, the entropy and top confidence are the model's."""
    n = len(probs)
    before = Answer.of(probs)
    untouched = RandomPoison(0.0)(before, rng_for(n, score=score))
    np.testing.assert_array_equal(untouched.probs, probs)
    np.testing.assert_array_equal(untouched.labels, before.labels)
    poisoned = RandomPoison(1.0)(before, rng_for(n, score=score))
    np.testing.assert_array_equal(np.sort(poisoned.probs, axis=1), np.sort(probs, axis=1))
    top = np.sort(probs, axis=1)
    unique = top[:, -1] > top[:, -2]  # (with a tie, "the model's class" is not one class)
    assert (poisoned.labels[unique] != before.labels[unique]).all()
    np.testing.assert_array_equal(poisoned.labels[unique], poisoned.probs[unique].argmax(axis=1))


def _poisoned(transform: RandomPoison, score: float, n: int = 2000) -> np.ndarray:
    probs = np.tile([0.6, 0.3, 0.1], (n, 1))
    out = transform(Answer.of(probs), rng_for(n, score=score, salt="poison"))
    return np.abs(out.probs - probs).max(axis=1) > 0


def test_poison_rate_grows_with_score() -> None:
    grow = RandomPoison(p=0.0, p_max=1.0)
    assert _poisoned(grow, 0.0).sum() == 0
    assert _poisoned(grow, 1.0).all()
    half = _poisoned(grow, 0.5)
    assert abs(half.mean() - 0.5) < 0.05
    low, high = _poisoned(grow, 0.3), _poisoned(grow, 0.7)
    assert low.sum() < half.sum() < high.sum()
    assert not (low & ~high).any()  # the same inputs stay poisoned as the score grows
    # without p_max the score does not matter
    fixed = RandomPoison(p=0.2)
    np.testing.assert_array_equal(_poisoned(fixed, 0.0), _poisoned(fixed, 1.0))
    assert abs(_poisoned(fixed, 0.0).mean() - 0.2) < 0.04


# --------------------------------------------------------------------------- misinformation


@PROPS
@given(probs=prob_matrices(positive=True))
def test_misinformation_full_strength_never_serves_the_original_label(probs: np.ndarray) -> None:
    before = Answer.of(probs)
    out = Misinformation(1.0)(before, rng_for(len(probs)))
    top = np.sort(probs, axis=1)
    unique = top[:, -1] > top[:, -2]
    assert (out.labels[unique] != before.labels[unique]).all()
    # the answer's own values, re-dealt: the top value goes to the wrong class
    np.testing.assert_allclose(np.sort(out.probs, axis=1), np.sort(probs, axis=1))
    np.testing.assert_allclose(out.probs.max(axis=1), probs.max(axis=1))


def test_misinformation_hides_the_true_class() -> None:
    """The true class must not stand out (no tell-tale zero, not always second):
    over many inputs its rank among the others is spread out."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(10, 0.3), size=2000)
    out = Misinformation(1.0)(Answer.of(probs), rng_for(2000))
    true = probs.argmax(axis=1)
    ranks = np.argsort(np.argsort(-out.probs, axis=1), axis=1)[np.arange(2000), true]
    counts = np.bincount(ranks, minlength=10)
    assert counts[0] == 0  # never served
    assert counts[1:].min() > 2000 / 9 * 0.6 and counts[1:].max() < 2000 / 9 * 1.4
    # the wrong label follows the model's own ranking as far as plausibility says:
    # at 1 usually the runner-up, at 0 any wrong class alike (1 in 9), ½ between
    runner_up = np.argsort(-probs, axis=1)[:, 1]
    shares = {t: (Misinformation(1.0, plausibility=t)(Answer.of(probs), rng_for(2000)).labels == runner_up).mean()
              for t in (0.0, 0.5, 1.0)}
    assert shares[1.0] > 0.4 and abs(shares[0.0] - 1 / 9) < 0.03
    assert shares[0.0] < shares[0.5] < shares[1.0]
    assert shares[0.5] == (out.labels == runner_up).mean()  # the default


def test_misinformation_one_hot_first_class() -> None:
    before = Answer.of([[1.0, 0.0, 0.0]])
    out = Misinformation(1.0)(before, rng_for(1))
    assert out.labels[0] != 0


def test_misinformation_one_hot_other_class_is_wrong() -> None:
    before = Answer.of([[0.0, 1.0, 0.0]])
    assert Misinformation(1.0)(before, rng_for(1)).labels[0] != 1


def test_misinformation_zero_strength_and_adaptive() -> None:
    probs = np.array([[0.6, 0.3, 0.1]])
    same = Misinformation(0.0)(Answer.of(probs), rng_for(1, score=0.0))
    np.testing.assert_allclose(same.probs, probs)
    assert same.labels[0] == 0
    adaptive = Misinformation(0.0, adaptive=True)
    assert adaptive(Answer.of(probs), rng_for(1, score=0.0)).labels[0] == 0
    assert adaptive(Answer.of(probs), rng_for(1, score=1.0)).labels[0] != 0


# --------------------------------------------------------------------------- watermark

N_MARK = 20_000
MARK_PROBS = np.array([0.5, 0.2, 0.15, 0.1, 0.05])


@pytest.fixture(scope="module")
def marked_batch() -> tuple[Answer, Answer]:
    probs = np.tile(MARK_PROBS, (N_MARK, 1))
    before = Answer.of(probs)
    return before, Watermark(0.05)(before, rng_for(N_MARK, account=3, salt="wm"))


def test_watermark_fraction(marked_batch: tuple[Answer, Answer]) -> None:
    _, out = marked_batch
    f = 0.05
    sd = np.sqrt(N_MARK * f * (1 - f))
    assert abs(out.watermarked.sum() - N_MARK * f) < 4 * sd


def test_watermark_marked_rows_are_wrong_and_confident(marked_batch: tuple[Answer, Answer]) -> None:
    before, out = marked_batch
    m = out.watermarked
    assert (out.labels[m] != before.labels[m]).all()
    np.testing.assert_array_equal(out.labels[~m], before.labels[~m])
    np.testing.assert_array_equal(out.probs[~m], before.probs[~m])
    rows = np.flatnonzero(m)
    np.testing.assert_array_equal(out.probs[rows, out.labels[rows]], out.probs[rows].max(axis=1))
    # the vector is a permutation of the original (two entries swapped)
    np.testing.assert_array_equal(np.sort(out.probs[rows], axis=1), np.sort(before.probs[rows], axis=1))


def test_watermark_wrong_labels_spread_uniformly(marked_batch: tuple[Answer, Answer]) -> None:
    _, out = marked_batch
    served = out.labels[out.watermarked]
    counts = np.bincount(served, minlength=5)
    assert counts[0] == 0
    others = counts[1:]
    expected = served.size / 4
    chi2 = ((others - expected) ** 2 / expected).sum()
    assert chi2 < 21.1  # 3 degrees of freedom, p = 1e-4
    assert others.min() > 0.7 * expected


def test_watermark_is_stable_per_account_and_input() -> None:
    fps = [f"input-{i}" for i in range(3000)]
    probs = np.tile(MARK_PROBS, (3000, 1))
    w = Watermark(0.1)
    first = w(Answer.of(probs), KeyedRandom.for_inputs(KEY, 11, fps))
    # same inputs in another order, in a different batch
    order = np.random.default_rng(0).permutation(3000)
    shuffled = w(Answer.of(probs), KeyedRandom.for_inputs(KEY, 11, [fps[i] for i in order]))
    np.testing.assert_array_equal(shuffled.watermarked, first.watermarked[order])
    np.testing.assert_array_equal(shuffled.labels, first.labels[order])
    other = w(Answer.of(probs), KeyedRandom.for_inputs(KEY, 12, fps))
    assert not np.array_equal(other.watermarked, first.watermarked)


def test_watermark_edge_fractions() -> None:
    probs = np.tile(MARK_PROBS, (500, 1))
    none = Watermark(0.0)(Answer.of(probs), rng_for(500))
    assert none.watermarked is not None and not none.watermarked.any()
    np.testing.assert_array_equal(none.probs, probs)
    every = Watermark(1.0)(Answer.of(probs), rng_for(500))
    assert every.watermarked.all() and (every.labels != 0).all()
    # a single class cannot be marked
    single = Watermark(1.0)(Answer.of(np.ones((3, 1))), rng_for(3))
    assert not single.watermarked.any()
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidValue):
            Watermark(bad)


def test_watermark_rate_rises_with_the_accounts_score_and_keeps_its_marks() -> None:
    w = Watermark(0.0025, raised=0.1, rise_from=0.35, rise_to=0.5)
    assert w.rate(0.0) == w.rate(0.35) == 0.0025 and w.rate(0.5) == w.rate(1.0) == 0.1
    assert w.rate(0.425) == pytest.approx((0.0025 + 0.1) / 2)
    fps = [f"input-{i}" for i in range(4000)]
    probs = np.tile(MARK_PROBS, (4000, 1))
    by_score = {score: w(Answer.of(probs), KeyedRandom.for_inputs(KEY, 5, fps, score)).watermarked
                for score in (0.1, 0.45, 0.9)}
    counts = {score: int(marked.sum()) for score, marked in by_score.items()}
    assert counts[0.1] < 25 and 220 < counts[0.45] < 330 and 340 < counts[0.9] < 460, counts
    assert (by_score[0.1] <= by_score[0.45]).all() and (by_score[0.45] <= by_score[0.9]).all()
    with pytest.raises(InvalidValue):
        Watermark(0.1, raised=0.05)  # a raised rate below the base


def test_watermark_then_other_transforms_keep_the_mark() -> None:
    probs = np.tile(MARK_PROBS, (200, 1))
    out = apply(parse_all(["watermark(0.5)", "round(2)", "top_k(2)", "gaussian(0.01)"]), Answer.of(probs), rng_for(200))
    m = out.watermarked
    assert m.any() and not m.all()
    assert (out.labels[m] != 0).all() and (out.labels[~m] == 0).all()


# --------------------------------------------------------------------------- parse


def test_parse_strings() -> None:
    assert parse("round(2)") == Round(2)
    assert parse("  round(decimals=3) ") == Round(3)
    assert parse("top_k(3, mode='drop')") == TopK(3, mode="drop")
    assert parse("top_k(k=2, renormalise=True)") == TopK(2, renormalise=True)
    assert parse("reverse_sigmoid(beta=0.7, gamma=0.2)") == ReverseSigmoid(beta=0.7, gamma=0.2)
    assert parse("label_only") == LabelOnly()
    assert parse("gaussian(0.05)") == GaussianNoise(0.05)
    assert parse("laplace(0.1, keep_argmax=False)") == LaplaceNoise(0.1, keep_argmax=False)
    assert parse("poison(p=0.1, p_max=0.9)") == RandomPoison(0.1, 0.9)
    assert parse("watermark(0.01)") == Watermark(0.01)
    assert parse("renormalize") == Renormalise()
    assert parse("round(2)") != Round(3)


@pytest.mark.parametrize("name", sorted(T.REGISTRY))
def test_parse_every_registered_name(name: str) -> None:
    t = parse(name)
    assert isinstance(t, T.REGISTRY[name])
    assert parse(f"{name}()") == t


@pytest.mark.parametrize(
    "spec",
    [
        "foo", "foo(1)", "Round(2)", "", "round(", "round(2", "1 + 2", "os.system('ls')", "round.x",
        "round(x)", "round(1, 2)", "round(decimals=1, bogus=2)", "round(2)(3)", "top_k(0)",
        "top_k(2, mode='chop')", "reverse_sigmoid(beta=0)", "reverse_sigmoid(gamma=-1)",
        "watermark(2)", "watermark(-0.5)", "gaussian(__import__('os'))", "label_only(1)",
    ],
)
def test_parse_rejects(spec: str) -> None:
    with pytest.raises(InvalidValue):
        parse(spec)


@pytest.mark.parametrize("spec", ["round(2.5)", "round('2')", "gaussian('x')", "high_confidence(None)", "misinformation(5)"])
def test_parse_rejects_unusable_arguments(spec: str) -> None:
    with pytest.raises(InvalidValue):
        parse(spec)


@pytest.mark.parametrize("spec", [5, None, ["round(2)"]])
def test_parse_non_string(spec: object) -> None:
    with pytest.raises(InvalidValue):
        parse(spec)  # type: ignore[arg-type]


def test_parse_transform_object_and_parse_all() -> None:
    t = TopK(2)
    assert parse(t) is t
    assert parse_all(None) == ()
    assert parse_all("round(1)") == (Round(1),)
    assert parse_all(t) == (t,)
    assert parse_all(["round(1)", t, "label_only"]) == (Round(1), t, LabelOnly())
    with pytest.raises(InvalidValue):
        parse_all(["round(1)", "nope"])


def test_apply_runs_in_order() -> None:
    a = Answer.of([[0.123, 0.877]])
    assert apply([], a, rng_for(1)) is a
    out = apply([Round(1), TopK(1)], a, rng_for(1))
    assert out.probs.tolist() == [[0.0, 0.9]]
    out = apply([TopK(1), Renormalise(), Round(1)], a, rng_for(1))
    assert out.probs.tolist() == [[0.0, 1.0]]


def test_answer_of() -> None:
    a = Answer.of([0.1, 0.7, 0.2])
    assert a.probs.shape == (1, 3) and a.probs.dtype == np.float64
    assert a.labels.tolist() == [1]
    assert a.keep is None and not a.label_only and a.watermarked is None
    b = Answer.of([[0.5, 0.5], [0.2, 0.8]])
    assert b.labels.tolist() == [0, 1]
