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
