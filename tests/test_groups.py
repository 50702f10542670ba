"""detectors/groups.py: colluding accounts found as a group, benign ones not,
on states built from synthetic class Gaussians (the reference fitted on them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from flask_modelguard.detectors.add import Reference
from flask_modelguard.detectors.groups import GroupSearch, deviations
from flask_modelguard.state import AccountState, Observation

DIM, CLASSES = 8, 3
CENTRES = np.random.default_rng(99).normal(0.0, 3.0, (CLASSES, DIM))


def _draw(rng: np.random.Generator, n: int, shift: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
    labels = rng.integers(0, CLASSES, n)
    X = CENTRES[labels] + rng.normal(0.0, 1.0, (n, DIM))
    return (X if shift is None else X + shift), labels.tolist()


@pytest.fixture(scope="module")
def reference() -> Reference:
    X, labels = _draw(np.random.default_rng(0), 3000)
    return Reference.fit(X, labels, seed=0)


def _state(rng: np.random.Generator, n: int, shift: np.ndarray | None = None) -> AccountState:
    X, labels = _draw(rng, n, shift)
    state = AccountState(DIM)
    for i in range(0, n, 5):
        part = slice(i, i + 5)
        state.update(Observation(float(i), [f"{rng.integers(2**62):016x}" for _ in labels[part]], X[part],
                                 labels[part], [0.9] * len(labels[part])))
    return state.flush()


def _benign(rng: np.random.Generator, count: int, shift: np.ndarray | None = None) -> dict[Any, AccountState]:
    return {f"benign-{i}": _state(rng, int(rng.integers(15, 200)), shift) for i in range(count)}


def _sybil(rng: np.random.Generator, name: str, parts: int, shift: np.ndarray, per_part: int = 15
           ) -> dict[Any, AccountState]:
    return {f"{name}#{k}": _state(rng, per_part, shift) for k in range(parts)}


def _shift(axis: int, size: float = 2.5) -> np.ndarray:
    shift = np.zeros(DIM)
    shift[axis] = size
    return shift


@pytest.mark.parametrize("parts", [5, 10, 20])
def test_a_sybil_is_found_as_one_group_and_no_benign_account_joins(reference: Reference, parts: int) -> None:
    rng = np.random.default_rng(parts)
    states = {**_benign(rng, 150), **_sybil(rng, "sybil", parts, _shift(0))}
    groups = GroupSearch().find(states, reference)
    members = [m for g in groups for m in g.members]
    assert all(str(m).startswith("sybil#") for m in members), members
    assert len(members) >= int(0.9 * parts), groups  # (a part or two may look like chance)
    group = groups[0]
    assert group.ratio >= 1.0 and group.z >= 6.0 and group.agreement >= 1.0 + np.sqrt(2 * np.log(len(states)))
    assert group.queries == sum(states[m].queries for m in group.members)
    assert "colluding group of" in group.reason and f"{group.distinct} inputs" in group.reason


def test_benign_accounts_alone_make_no_group(reference: Reference) -> None:
    rng = np.random.default_rng(7)
    assert GroupSearch().find(_benign(rng, 400), reference) == []


def test_a_shift_shared_by_every_account_makes_no_group(reference: Reference) -> None:
    """Traffic that drifted away from the reference, all of it: not collusion."""
    rng = np.random.default_rng(8)
    assert GroupSearch().find(_benign(rng, 200, shift=_shift(2, 0.3)), reference) == []


def test_two_sybils_of_different_sources_are_two_groups(reference: Reference) -> None:
    rng = np.random.default_rng(9)
    states = {**_benign(rng, 100), **_sybil(rng, "left", 8, _shift(0)), **_sybil(rng, "right", 8, _shift(5, -2.5))}
    groups = GroupSearch().find(states, reference)
    assert len(groups) == 2, groups
    for group in groups:
        assert len({str(m).split("#")[0] for m in group.members}) == 1, group.members


def test_a_lone_account_is_no_group_and_big_accounts_are_judged_alone(reference: Reference) -> None:
    rng = np.random.default_rng(10)
    lone = {**_benign(rng, 50), **_sybil(rng, "lone", 1, _shift(0), per_part=60)}
    assert GroupSearch().find(lone, reference) == []
    big = {**_benign(rng, 50), **_sybil(rng, "big", 4, _shift(0), per_part=60)}
    assert GroupSearch(max_member_queries=50).find(big, reference) == []
    assert len(GroupSearch().find(big, reference)) == 1


def test_a_reference_without_thresholds_finds_nothing(reference: Reference) -> None:
    rng = np.random.default_rng(11)
    states = {**_benign(rng, 30), **_sybil(rng, "s", 10, _shift(0))}
    bare = Reference(reference.classes)
    assert GroupSearch().find(states, bare) == []


def test_deviations_are_unit_scale_under_the_reference(reference: Reference) -> None:
    """The statistic's premise: under the reference, an entry of class c of
    an account's vector has variance n_c (so |V|²/n averages 2·DIM)."""
    rng = np.random.default_rng(12)
    V, counts = deviations(_benign(rng, 300), reference)
    assert counts.shape == (300, CLASSES)
    per_input = ((V**2).sum(axis=1) / counts.sum(axis=1)).mean()
    assert 0.7 * 2 * DIM < per_input < 1.3 * 2 * DIM, per_input


def _with_client(state: AccountState, client: int) -> AccountState:
    state.clients = np.array([client], dtype=np.uint64)
    return state


def _attributed(groups: list[Any]) -> tuple[int, int]:
    """Sybil parts and other accounts among the groups' members."""
    members = [str(m) for g in groups for m in g.members]
    return sum(m.startswith("sybil#") for m in members), sum(not m.startswith("sybil#") for m in members)


def test_a_mild_sybil_behind_one_client_is_attributed_through_it(reference: Reference) -> None:
    """Parts shifted 1.2σ: the search over 160 accounts attributes none of them;
    sharing a client narrows it to them, with the bar of that set's size."""
    rng = np.random.default_rng(15)
    benign = _benign(rng, 150)
    for i, name in enumerate(benign):  # pairs of honest users behind one address (a household)
        _with_client(benign[name], 1000 + i // 2)
    parts = {name: _with_client(state, 7) for name, state in _sybil(rng, "sybil", 10, _shift(0, 1.2)).items()}
    unlinked = {**benign, **{n: _with_client(s.copy(), 2000 + k) for k, (n, s) in enumerate(parts.items())}}
    alone, _ = _attributed(GroupSearch().find(unlinked, reference))
    groups = GroupSearch().find({**benign, **parts}, reference)
    linked, others = _attributed(groups)
    assert others == 0 and linked >= 7 and alone == 0, (alone, groups)
    assert any(g.link == "sharing a client" and "sharing a client" in g.reason for g in groups)


def test_honest_users_behind_a_thiefs_address_do_not_join_its_group(reference: Reference) -> None:
    rng = np.random.default_rng(14)
    benign = _benign(rng, 150)
    for name in list(benign)[:30]:  # a carrier's NAT: 30 honest users and the thief
        _with_client(benign[name], 7)
    parts = {name: _with_client(state, 7) for name, state in _sybil(rng, "sybil", 10, _shift(0, 1.6)).items()}
    linked, others = _attributed(GroupSearch().find({**benign, **parts}, reference))
    assert linked >= 8 and others == 0


def test_honest_households_behind_shared_clients_make_no_group(reference: Reference) -> None:
    rng = np.random.default_rng(14)
    benign = _benign(rng, 400)
    for i, name in enumerate(benign):  # every three honest users behind one address
        _with_client(benign[name], 5000 + i // 3)
    assert GroupSearch().find(benign, reference) == []


def test_a_drift_shared_by_accounts_of_every_size_and_class_mix_makes_no_group(reference: Reference) -> None:
    """Drift is removed per entry over the accounts that have inputs there: small
    accounts of one class must not look alike because they lack the others."""
    rng = np.random.default_rng(16)
    drift = np.full(DIM, 0.3)
    states = _benign(rng, 150, shift=drift)
    for i in range(50):  # small accounts whose inputs are all of one class
        X = CENTRES[0] + rng.normal(0.0, 1.0, (8, DIM)) + drift
        state = AccountState(DIM)
        state.update(Observation(0.0, [f"{rng.integers(2**62):016x}" for _ in range(8)], X, [0] * 8, [0.9] * 8))
        states[f"small-{i}"] = state.flush()
    assert GroupSearch().find(states, reference) == []


def test_a_member_that_only_dilutes_the_evidence_is_dropped(reference: Reference) -> None:
    """An honest account among a thief's parts lowers the merged state's ADD
    ratio (its inputs are the reference's): it leaves, the parts stay."""
    from flask_modelguard.detectors.groups import _Pool

    rng = np.random.default_rng(12)
    states = {**_sybil(rng, "sybil", 3, _shift(0)), "honest": _state(rng, 150)}
    search = GroupSearch()
    pool = _Pool(states, reference, search.min_member_queries, search.max_member_queries)
    everyone = list(range(len(pool.ids)))
    kept = [pool.ids[m] for m in search._undiluted(everyone, pool)]
    assert sorted(kept) == ["sybil#0", "sybil#1", "sybil#2"]
    assert search._ratio(everyone, pool) < search._ratio([pool.ids.index(k) for k in kept], pool)
    assert [pool.ids[m] for m in GroupSearch(undilute=False)._keep_agreeing(everyone, pool, -np.inf)] == list(states)
