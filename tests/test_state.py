"""AccountState: merge equivalence, serialisation, memory budget, behaviour vector."""

from __future__ import annotations

import json
import secrets

import numpy as np
import pytest

from flask_modelguard.state import BEHAVIOUR, AccountState, Observation, behaviour


def observations(rng, n, dim=64, classes=10, start=1_800_000_000.0):
    out = []
    ts = start
    for _ in range(n):
        ts += float(rng.exponential(2.0))
        k = int(rng.integers(1, 4))
        labels = rng.integers(0, classes, k).tolist()
        out.append(Observation(
            ts, [secrets.token_hex(16) if rng.random() > 0.2 else "ab" * 16 for _ in range(k)],
            rng.normal(size=(k, dim)) + np.asarray(labels)[:, None], labels, rng.uniform(0.3, 1.0, k).tolist(),
        ))
    return out


def test_merging_process_states_equals_one_state():
    rng = np.random.default_rng(0)
    obs = observations(rng, 600)
    whole = AccountState(64)
    for o in obs:
        whole.update(o)
    parts = [AccountState(64) for _ in range(3)]
    for i, o in enumerate(obs):  # round-robin, as a load balancer would
        parts[i % 3].update(o)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    whole.flush()  # feature rows wait in a small buffer until read
    assert merged.queries == whole.queries and merged.requests == whole.requests
    assert merged.minutes.as_dict() == whole.minutes.as_dict() and merged.labels.counts == whole.labels.counts
    assert merged.confidences.counts == whole.confidences.counts
    assert merged.unique.estimate() == whole.unique.estimate()
    np.testing.assert_array_equal(merged.recent, whole.recent)
    assert whole.recent.size == 64 and whole.recent[-1] == obs[-1].ts
    np.testing.assert_allclose(merged.moments.cov(), whole.moments.cov(), rtol=1e-9, atol=1e-12)
    for label, m in whole.by_class.items():
        np.testing.assert_allclose(merged.by_class[label].cov(), m.cov(), rtol=1e-9, atol=1e-12)
    assert behaviour(merged) == pytest.approx(behaviour(whole))


def test_state_round_trips_through_json():
    rng = np.random.default_rng(1)
    state = AccountState(64)
    for o in observations(rng, 200):
        state.update(o)
    again = AccountState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert behaviour(again) == pytest.approx(behaviour(state))
    assert again.to_dict() == json.loads(json.dumps(state.to_dict()))


def test_stored_state_stays_small():
    rng = np.random.default_rng(2)
    state = AccountState(64)
    for o in observations(rng, 5000):
        state.update(o)
    assert state.queries > 5000
    assert len(json.dumps(state.to_dict())) <= 64 * 1024


def deep_size(obj) -> int:
    """Bytes of ``obj`` and of everything it references (each object once):
    containers, instance dicts and slots, numpy arrays with their data."""
    import sys
    import types

    seen, stack, total = set(), [obj], 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, (type, types.ModuleType, types.FunctionType, np.dtype)):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, np.ndarray):
            stack.append(o.base)  # a view: the array it shows (getsizeof counts owned data)
            continue
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        if hasattr(o, "__dict__"):
            stack.append(o.__dict__)
        stack.extend(getattr(o, name) for cls in type(o).__mro__ for name in getattr(cls, "__slots__", ())
                     if hasattr(o, name))
    return total


def test_an_account_in_memory_stays_within_64_KiB():
    """What the worker holds per account (merged state, PRADA, recent
    fingerprints, window; every object it references), for the largest
    account the defaults allow: natural digits of 10 classes over a whole day
    of minutes, after a merge into storage; and what a delta of unmerged
    queries adds until the next merge."""
    import hashlib

    from sklearn.datasets import load_digits

    from flask_modelguard.monitor import Monitor

    X, _ = load_digits(return_X_y=True)
    rng = np.random.default_rng(5)

    def stream(n, start):
        rows = rng.integers(0, len(X), n)
        return [Observation(start + 60.0 * i, [hashlib.blake2b(f"{start}/{i}".encode()).hexdigest()[:32]],
                            X[r][None].copy(), [int(r % 10)], [0.9], raw=X[r][None].copy())
                for i, r in enumerate(rows)]

    monitor = Monitor(64)
    for o in stream(1500, 1.8e9):
        monitor.observe(1, o)
    whole = monitor.state(1).copy()
    assert [a for a, _ in monitor.take_deltas()] == [1]  # as the worker does: the delta taken, stored,
    monitor.merged(1, whole)  # and the stored state handed back
    account = monitor.accounts[1]
    assert len(account.base.minutes) == 1440 and len(account.base.by_class) == 10
    assert account.base.unique.exact is None and len(account.prada.classes) == 10
    at_rest = deep_size(account)
    for o in stream(100, 1.9e9):
        monitor.observe(1, o)
    active = deep_size(account)
    print(f"at rest {at_rest / 1024:.1f} KiB, with a delta {active / 1024:.1f} KiB, "
          f"estimate {account.memory_bytes() / 1024:.1f} KiB")
    assert at_rest <= 64 * 1024, at_rest / 1024
    assert active - at_rest <= 24 * 1024, (active - at_rest) / 1024
    assert account.memory_bytes() == pytest.approx(active, rel=0.25)  # the estimate the monitor reports


def test_behaviour_vector_is_complete_and_meaningful():
    rng = np.random.default_rng(3)
    state = AccountState(64)
    for o in observations(rng, 300):
        state.update(o)
    vector = behaviour(state)
    assert set(vector) == set(BEHAVIOUR)
    assert vector["log_gap"] == pytest.approx(np.log1p(2.0), abs=0.4)  # exponential gaps of mean 2 s
    assert 0.6 < vector["gap_cv"] < 1.5  # an exponential's CV is 1
    assert all(np.isfinite(v) for v in vector.values())
    assert 0.7 < vector["unique_ratio"] < 0.95  # one in five inputs repeats the same fingerprint
    assert vector["classes_seen"] == 10 and vector["label_entropy"] > 0.9
    empty = behaviour(AccountState(64))
    assert empty["log_queries"] == 0 and empty["unique_ratio"] == 0


def test_minute_window_trims_by_time_and_merges_exactly():
    rng = np.random.default_rng(4)
    obs = observations(rng, 400)
    for o in obs:
        o.ts = 1_800_000_000.0 + float(rng.uniform(0, 6 * 3600))  # six hours, out of order
    whole = AccountState(64, window_minutes=60)
    parts = [AccountState(64, window_minutes=60) for _ in range(3)]
    for i, o in enumerate(obs):
        whole.update(o)
        parts[i % 3].update(o)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.minutes.as_dict() == whole.minutes.as_dict()
    assert whole.minutes.last - whole.minutes.first < 60


def test_label_keys_unify_numbers_and_strings():
    from flask_modelguard.state import label_key

    assert label_key(3) == label_key(3.0) == label_key("3") == label_key("3.0") == "3"
    assert label_key("cat") == "cat" and label_key(2.5) == "2.5"


def test_unique_counter_merges_and_estimates():
    import secrets as s

    from flask_modelguard.sketch import UniqueCounter

    fps = [s.token_hex(16) for _ in range(5000)]
    small = UniqueCounter().add(fps[:100] + fps[:100])
    assert small.estimate() == 100 and small.exact is not None
    one_by_one = UniqueCounter()
    for fp in fps[:100] + fps[:100]:
        one_by_one.add([fp])
    assert one_by_one.to_dict() == small.to_dict()
    a, b = UniqueCounter().add(fps[:3000]), UniqueCounter().add(fps[2000:])
    whole = UniqueCounter().add(fps)
    assert a.merge(b).registers == whole.registers
    assert abs(whole.estimate() - 5000) / 5000 < 0.1
    assert UniqueCounter.from_dict(whole.to_dict()).estimate() == whole.estimate()


def test_clients_are_a_bottom_k_sample_that_merges_exactly():
    from flask_modelguard.state import CLIENTS

    rng = np.random.default_rng(5)
    hashes = rng.integers(0, 2**63, 40, dtype=np.uint64)
    one, a, b = AccountState(4), AccountState(4), AccountState(4)
    for i, h in enumerate(hashes.tolist() * 2):  # each client twice
        obs = Observation(float(i), [f"{i:016x}"], np.ones((1, 4)), [0], [0.9], client=int(h))
        one.update(obs)
        (a if i % 3 else b).update(obs)
    expected = np.sort(np.unique(hashes))[:CLIENTS]
    assert one.clients.tolist() == expected.tolist()
    assert a.copy().merge(b).clients.tolist() == expected.tolist()
    assert AccountState.from_dict(one.to_dict()).clients.tolist() == expected.tolist()
    assert AccountState.from_dict({**one.to_dict(), "clients": None}).clients.size == 0  # states from before
