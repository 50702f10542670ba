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
