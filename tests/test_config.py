from __future__ import annotations

import os

import pytest

from flask_modelguard import Settings
from flask_modelguard.exc import InvalidValue

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")


def test_every_setting_is_documented():
    text = open(os.path.join(DOCS, "configuration.md")).read()
    missing = [key for key in Settings.keys() if f"`{key}`" not in text]
    assert not missing


def test_resolution_order():
    s = Settings.resolve({"MODELGUARD_STRATEGY": "moving-window", "MODELGUARD_NAMESPACE": "cfg"}, {"namespace": "arg"})
    assert (s.strategy, s.namespace, s.fail_mode) == ("moving-window", "arg", "open")


@pytest.mark.parametrize(
    "config",
    [
        {"MODELGUARD_DEFAULT_TIER": "gold"},
        {"MODELGUARD_AUTH_HEADER": None, "MODELGUARD_API_KEY_HEADER": None},
        {"MODELGUARD_FAIL_MODE": "half"},
        {"MODELGUARD_INPUT_RANGE": [16, 0]},
        {"MODELGUARD_INPUT_RANGE": [0, float("inf")]},
        {"MODELGUARD_INPUT_RANGE": 16},
    ],
)
def test_invalid_settings(config):
    with pytest.raises(InvalidValue):
        Settings.resolve(config, {})


def test_fingerprint_key_sources():
    s = Settings()
    assert s.fingerprint_key("app-secret") == s.fingerprint_key(b"app-secret")
    assert Settings(secret="own").fingerprint_key("app-secret") != s.fingerprint_key("app-secret")
    assert s.fingerprint_key(None) != s.fingerprint_key(None)  # random per call when nothing is set


@pytest.mark.parametrize(
    "config",
    [
        {"MODELGUARD_SECRET": 123456},
        {"MODELGUARD_QUEUE_SIZE": 0},
        {"MODELGUARD_KEY_CACHE_TTL": "soon"},
        {"MODELGUARD_TIERS": ["free"]},
        {"MODELGUARD_ENABLED": "yes"},
    ],
)
def test_settings_of_the_wrong_type_are_refused(config):
    with pytest.raises(InvalidValue):
        Settings.resolve(config, {})


def test_constructor_checks_names_and_leaves_values_to_the_app(tmp_path):
    from flask_modelguard import ModelGuard

    from .conftest import model_app

    guard = ModelGuard(default_tier="internal")  # a tier only the app's config defines
    app = model_app(guard, MODELGUARD_TIERS={"internal": ""}, MODELGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/c.db")
    with app.app_context():
        assert guard.create_account("x")["tier"] == "internal"
    guard.close(app)


def test_a_served_app_without_a_secret_is_refused_unless_debug_or_testing(tmp_path):
    from flask import Flask

    from flask_modelguard import ModelGuard

    def app(**config):
        a = Flask(__name__)
        a.config.update(MODELGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/s.db", **config)
        return a

    with pytest.raises(InvalidValue, match="SECRET_KEY"):
        ModelGuard(app())
    for ok in (app(TESTING=True), app(DEBUG=True), app(MODELGUARD_SECRET="own"), app(SECRET_KEY="k"),
               app(MODELGUARD_ENABLED=False)):
        ModelGuard(ok).state(ok).close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"MODELGUARD_ENABLED": "yes"}, "MODELGUARD_ENABLED has the wrong type: 'yes'"),
        ({"MODELGUARD_TIERS": ["free"]}, "MODELGUARD_TIERS has the wrong type: ['free']"),
        ({"MODELGUARD_SECRET": 123456}, "MODELGUARD_SECRET has the wrong type: 123456"),
        ({"MODELGUARD_QUEUE_SIZE": 0}, "MODELGUARD_QUEUE_SIZE must be an integer >= 1, not 0"),
        ({"MODELGUARD_QUEUE_SIZE": 2.0}, "MODELGUARD_QUEUE_SIZE must be an integer >= 1, not 2.0"),
        ({"MODELGUARD_KEY_CACHE_TTL": "soon"}, "MODELGUARD_KEY_CACHE_TTL must be a number >= 0, not 'soon'"),
        ({"MODELGUARD_FLUSH_INTERVAL": -1}, "MODELGUARD_FLUSH_INTERVAL must be a number >= 0, not -1"),
        ({"MODELGUARD_FLUSH_INTERVAL": float("nan")}, "MODELGUARD_FLUSH_INTERVAL must be a number >= 0, not nan"),
        ({"MODELGUARD_WATERMARK": True}, "MODELGUARD_WATERMARK must be a fraction in [0, 1], not True"),
        ({"MODELGUARD_WATERMARK": 1.5}, "MODELGUARD_WATERMARK must be a fraction in [0, 1], not 1.5"),
        ({"MODELGUARD_ANOMALY_FPR": 1.0}, "MODELGUARD_ANOMALY_FPR must be a fraction in (0, 1)"),
        ({"MODELGUARD_ENSEMBLE_FPR": "low"}, "MODELGUARD_ENSEMBLE_FPR must be a fraction in (0, 1)"),
        ({"MODELGUARD_FAIL_MODE": "half"}, "MODELGUARD_FAIL_MODE must be 'open' or 'closed', not 'half'"),
        ({"MODELGUARD_FAIL_MODE": 5}, "MODELGUARD_FAIL_MODE has the wrong type: 5"),
        ({"MODELGUARD_ACTION": 5}, "MODELGUARD_ACTION must be observe, degrade, throttle or block, not 5"),
        ({"MODELGUARD_VERDICT": "all"}, "MODELGUARD_VERDICT must be 'any', 'auto' or 'ensemble', not 'all'"),
        ({"MODELGUARD_DEDUCT_WHEN": "never"}, "MODELGUARD_DEDUCT_WHEN must be 'success' or 'always', not 'never'"),
        ({"MODELGUARD_UNRECOGNISED": None}, "MODELGUARD_UNRECOGNISED must be 'pass' or 'withhold', not None"),
        ({"MODELGUARD_POPULATION": "on"}, "MODELGUARD_POPULATION must be 'auto', true or false, not 'on'"),
        ({"MODELGUARD_SECURE_COOKIES": "yes"}, "MODELGUARD_SECURE_COOKIES must be None, true or false, not 'yes'"),
        ({"MODELGUARD_FEATURE_SPACE": ""}, "MODELGUARD_FEATURE_SPACE must be a non-empty string, not ''"),
        ({"MODELGUARD_FEATURE_SPACE": 3}, "MODELGUARD_FEATURE_SPACE must be a non-empty string, not 3"),
        ({"MODELGUARD_METRICS_TOKEN": ""}, "MODELGUARD_METRICS_TOKEN must not be empty (None turns it off)"),
        ({"MODELGUARD_METRICS_PATH": "metrics"}, "MODELGUARD_METRICS_PATH must start with '/', not 'metrics'"),
        ({"MODELGUARD_METRICS_PATH": 5}, "MODELGUARD_METRICS_PATH has the wrong type: 5"),
        ({"MODELGUARD_ADMIN_PREFIX": "/admin/"}, "MODELGUARD_ADMIN_PREFIX must start with '/' and not end with one: '/admin/'"),
        ({"MODELGUARD_ALERT_WEBHOOK": "ftp://h"}, "MODELGUARD_ALERT_WEBHOOK must be an http(s) URL, not 'ftp://h'"),
        ({"MODELGUARD_SPILL": 0}, "MODELGUARD_SPILL must be a directory, None or False, not 0"),
        ({"MODELGUARD_INPUT_RANGE": [16, 0]}, "MODELGUARD_INPUT_RANGE must be [low, high] with low < high, not [16, 0]"),
        ({"MODELGUARD_REFERENCE": 5}, "MODELGUARD_REFERENCE must be a path (.npz, .json) or a function returning (inputs, labels)"),
        ({"MODELGUARD_FEATURES": "flatten"}, "MODELGUARD_FEATURES must be a function of one model input"),
        ({"MODELGUARD_ADMIN_AUTH": "me"}, "MODELGUARD_ADMIN_AUTH must be a function of the request"),
        ({"MODELGUARD_CLOCK": 5}, "MODELGUARD_CLOCK must be a function returning epoch seconds"),
        ({"MODELGUARD_ANOMALY_MODELS": ["svm"]}, "MODELGUARD_ANOMALY_MODELS must list some of isolation_forest, one_class_svm, lof"),
        ({"MODELGUARD_RULES": ["bogus"]}, "MODELGUARD_RULES must name some of "),
        ({"MODELGUARD_RULES": {"unique_per_hour": {"zz": 1}}}, "MODELGUARD_RULES['unique_per_hour'] takes "),
        ({"MODELGUARD_DEFAULT_TIER": "gold"}, "MODELGUARD_DEFAULT_TIER 'gold' is not in MODELGUARD_TIERS"),
        ({"MODELGUARD_ACTION": "throttle", "MODELGUARD_THROTTLE_TIER": "gold"},
         "MODELGUARD_THROTTLE_TIER 'gold' is not in MODELGUARD_TIERS"),
        ({"MODELGUARD_AUTH_HEADER": None, "MODELGUARD_API_KEY_HEADER": ""},
         "At least one of MODELGUARD_AUTH_HEADER and MODELGUARD_API_KEY_HEADER must be set"),
    ],
)
def test_error_messages(config, message):
    with pytest.raises(InvalidValue) as raised:
        Settings.resolve(config, {})
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    "config",
    [
        {"MODELGUARD_KEY_CACHE_TTL": 0, "MODELGUARD_ROTATION_GRACE": float("inf")},  # an int is a number
        {"MODELGUARD_WATERMARK": 0, "MODELGUARD_PRADA_THRESHOLD": 1},
        {"MODELGUARD_WATERMARK": 1.0, "MODELGUARD_ANOMALY_FPR": 0.1, "MODELGUARD_ENSEMBLE_FPR": 0.999},
        {"MODELGUARD_SECURE_COOKIES": True, "MODELGUARD_POPULATION": False, "MODELGUARD_SPILL": False},
        {"MODELGUARD_SECURE_COOKIES": False, "MODELGUARD_POPULATION": True, "MODELGUARD_SPILL": "/tmp/spill"},
        {"MODELGUARD_SECRET": b"bytes", "MODELGUARD_DATABASE_URL": None, "MODELGUARD_AUTH_HEADER": None},
        {"MODELGUARD_INPUT_RANGE": (0.0, 16), "MODELGUARD_ANOMALY_MODELS": ("lof",), "MODELGUARD_RULES": ["unique_per_hour"]},
        {"MODELGUARD_RULES": {"unique_per_hour": {}}, "MODELGUARD_FEATURE_SPACE": "mine/8", "MODELGUARD_CLOCK": lambda: 0.0},
        {"MODELGUARD_METRICS_PATH": None, "MODELGUARD_METRICS_TOKEN": "t", "MODELGUARD_ALERT_WEBHOOK": "https://h/x"},
        {"MODELGUARD_ACTION": "throttle", "MODELGUARD_THROTTLE_TIER": "free", "MODELGUARD_VERDICT": "ensemble"},
    ],
)
def test_accepted_values(config):
    Settings.resolve(config, {})


def test_every_typed_setting_refuses_a_value_of_another_type():
    """Validation comes from the annotations: each setting not annotated
    ``Any`` refuses an object of no type it names."""
    from dataclasses import fields
    from typing import Any, get_type_hints

    class Alien:
        pass

    hints = get_type_hints(Settings)
    typed = [f.name for f in fields(Settings) if hints[f.name] is not Any]
    assert len(typed) > 40
    for name in typed:
        with pytest.raises(InvalidValue, match=f"MODELGUARD_{name.upper()}"):
            Settings(**{name: Alien()}).validate()
    Settings().validate()  # and every default is of its own type
