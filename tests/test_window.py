"""Windowed statistics (label entropy, uniqueness, hourly rate), the Gaussian
feature entropy, and the opt-in rules, on constructed data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flask_modelguard.config import Settings
from flask_modelguard.detectors.window import RULES, Window, feature_entropy, rule_reasons
from flask_modelguard.exc import InvalidValue
from flask_modelguard.monitor import Monitor
from flask_modelguard.state import Observation


def test_window_statistics_over_the_last_queries_and_the_last_hour():
    window = Window(size=8)
    for i in range(12):  # 4 fall out of the window
        window.add(fingerprint=i % 6, label=str(i % 2), ts=600.0 * i)
    stats = window.stats()
    assert stats["window_queries"] == 8
    assert stats["window_label_entropy"] == pytest.approx(1.0)  # two labels, evenly
    assert stats["window_unique_ratio"] == pytest.approx(6 / 8)
    assert stats["window_duplicate_rate"] == pytest.approx(2 / 8)
    # the last hour, 3000..6600 inclusive: i = 5..11, fingerprints 5, 0, 1, 2, 3, 4, 5
    assert stats["hour_queries"] == 7 and stats["hour_unique_ratio"] == pytest.approx(6 / 7)
    one_label = Window()
    for i in range(5):
        one_label.add(i, "3", float(i))
    assert one_label.stats()["window_label_entropy"] == 0.0
    assert Window().stats() == {}


def test_feature_entropy_is_the_gaussian_entropy_per_dimension():
    assert feature_entropy(np.eye(4), ridge=0.0) == pytest.approx(0.5 * math.log(2 * math.pi * math.e))
    wide, narrow = feature_entropy(4 * np.eye(3)), feature_entropy(0.25 * np.eye(3))
    assert wide - narrow == pytest.approx(math.log(4), rel=1e-5)
    assert feature_entropy(np.zeros((3, 3))) is not None  # rank-deficient: the ridge keeps it finite
    assert feature_entropy(np.full((2, 2), np.nan)) is None


def test_rules_and_their_reasons():
    busy = {"hour_queries": 150.0, "hour_unique_ratio": 0.97, "window_queries": 128.0, "window_label_entropy": 0.99}
    assert len(rule_reasons(busy, RULES)) == 2
    assert rule_reasons(busy, {}) == []
    quiet = {**busy, "hour_queries": 40.0, "window_label_entropy": 0.7}
    assert rule_reasons(quiet, RULES) == []
    assert "97% of 150 queries in the last hour unique" in rule_reasons(busy, RULES)[0]


def test_settings_resolve_rules():
    assert Settings(rules=["unique_per_hour"]).resolved_rules() == {"unique_per_hour": RULES["unique_per_hour"]}
    custom = Settings(rules={"label_entropy": {"entropy": 0.9}}).resolved_rules()
    assert custom["label_entropy"] == {"entropy": 0.9, "min_queries": 100}
    for bad in (["nope"], {"label_entropy": {"colour": 1}}, "unique_per_hour"):
        with pytest.raises(InvalidValue):
            Settings(rules=bad).validate()


def test_monitor_records_window_statistics_and_a_rule_flags():
    rng = np.random.default_rng(0)
    monitor = Monitor(4, min_queries=20, every=10)
    monitor.rules = {"unique_per_hour": {"share": 0.9, "min_queries": 100}}
    evaluation = None
    for i in range(120):  # 120 distinct inputs in 20 minutes, every class
        obs = Observation(10.0 * i, [f"{i:016x}{0:016x}"], rng.uniform(0, 1, (1, 4)), [str(i % 10)], [0.9])
        evaluation = monitor.observe(7, obs) or evaluation
    assert evaluation is not None and evaluation.queries == 120
    assert evaluation.scores["hour_unique_ratio"] == 1.0 and evaluation.scores["window_label_entropy"] > 0.99
    assert evaluation.scores["feature_entropy"] is not None
    assert any("in the last hour unique" in r for r in evaluation.reasons)
    quiet = Monitor(4, min_queries=20, every=10)  # no rules: the same traffic is only recorded
    for i in range(120):
        last = quiet.observe(7, Observation(10.0 * i, [f"{i:016x}{0:016x}"], rng.uniform(0, 1, (1, 4)), [str(i % 10)], [0.9]))
        evaluation = last or evaluation
    assert not any("unique" in r for r in evaluation.reasons)
