"""The package's public API: what ``flask_modelguard`` exports, and that the
names the documentation uses exist."""

from __future__ import annotations

import glob
import importlib
import os
import re
import types

import pytest

import flask_modelguard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED = {
    # the extension
    "ModelGuard", "RouteOptions", "Settings", "problem_response", "protect",
    # errors
    "ModelGuardError", "NotFound", "AlreadyExists", "InvalidValue", "Problem", "BadRequest", "MissingKey", "MalformedKey",
    "InvalidKey", "ExpiredKey", "RevokedKey", "AccountSuspended", "AccountBlocked", "CostExceedsLimit",
    "AnswerWithheld", "RateLimitExceeded", "StorageUnavailable", "DatabaseUnavailable", "PayloadTooLarge",
    # signals
    "account_flagged", "account_blocked", "quota_exceeded",
    # output protection: transforms, the answer they rewrite, payload adapters
    "Transform", "Answer", "Round", "TopK", "LabelOnly", "HighConfidence", "GaussianNoise", "LaplaceNoise",
    "ReverseSigmoid", "Renormalise", "RandomPoison", "Misinformation", "Watermark",
    "ProbabilityMark",
    "PayloadAdapter", "Reading",
}


def _documents() -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")]


def test_all_is_the_public_api():
    assert set(flask_modelguard.__all__) == EXPECTED
    assert len(flask_modelguard.__all__) == len(EXPECTED)  # no duplicates


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_public_name_is_importable(name):
    namespace: dict[str, object] = {}
    exec(f"from flask_modelguard import {name}", namespace)
    assert namespace[name] is getattr(flask_modelguard, name)
    assert not isinstance(namespace[name], types.ModuleType)


def test_star_import_gives_the_public_api():
    namespace: dict[str, object] = {}
    exec("from flask_modelguard import *", namespace)
    assert set(namespace) - {"__builtins__"} == EXPECTED


def test_no_private_names_are_exported():
    assert not [name for name in flask_modelguard.__all__ if name.startswith("_")]


def test_version():
    assert isinstance(flask_modelguard.__version__, str) and re.fullmatch(r"\d+\.\d+\.\d+\S*", flask_modelguard.__version__)


def test_errors_and_transforms_are_the_defining_modules_classes():
    from flask_modelguard import exc, payload, signals, transforms

    assert flask_modelguard.Problem is exc.Problem and issubclass(flask_modelguard.BadRequest, exc.Problem)
    assert flask_modelguard.Transform is transforms.Transform
    for cls in transforms.REGISTRY.values():  # every built-in transform
        assert getattr(flask_modelguard, cls.__name__) is cls
    assert flask_modelguard.PayloadAdapter is payload.PayloadAdapter
    assert flask_modelguard.quota_exceeded is signals.quota_exceeded


def test_internals_stay_importable_from_their_modules():
    from flask_modelguard.events import QueryEvent, fingerprint  # noqa: F401
    from flask_modelguard.limitset import DEFAULT_TIERS, Verdict  # noqa: F401
    from flask_modelguard.quotas import QuotaEnforcer  # noqa: F401
    from flask_modelguard.worker import EventWorker  # noqa: F401


def _resolve(dotted: str) -> object:
    """The object a dotted name ``flask_modelguard.a.b`` names: modules
    imported as far as they go, then attributes."""
    parts = dotted.split(".")
    obj: object = flask_modelguard
    for i, part in enumerate(parts[1:], start=2):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            obj = importlib.import_module(".".join(parts[:i]))
    return obj


def _documented_names() -> tuple[set[str], set[str]]:
    """Names the documentation imports from the package, and dotted names it mentions."""
    imported, dotted = set(), set()
    for path in _documents():
        text = open(path, encoding="utf-8").read()
        for group, line in re.findall(r"from flask_modelguard import (?:\(([^)]*)\)|([\w, ]+))", text):
            imported |= {n.strip() for n in (group or line).replace("\n", ",").split(",") if n.strip()}
        dotted |= set(re.findall(r"\bflask_modelguard(?:\.\w+)+", text))
    return imported, dotted


def test_documented_names_exist():
    imported, dotted = _documented_names()
    assert imported and dotted  # the patterns still find something
    for name in imported:
        assert hasattr(flask_modelguard, name), f"the docs import {name!r} from flask_modelguard"
    missing = []
    for name in sorted(dotted):
        try:
            _resolve(name)
        except ImportError:
            missing.append(name)
    assert not missing, f"the docs name {missing}, which do not exist"


def test_documented_top_level_names_are_public():
    """``from flask_modelguard import X`` and ``flask_modelguard.X`` in the docs:
    X is in ``__all__`` (or a submodule)."""
    imported, dotted = _documented_names()
    top = imported | {name.split(".")[1] for name in dotted}
    private = [n for n in top if not isinstance(getattr(flask_modelguard, n, None), types.ModuleType)
               and not _is_submodule(n) and n not in flask_modelguard.__all__]
    assert not private, f"the docs use {private} from flask_modelguard, which are not public"


def _is_submodule(name: str) -> bool:
    try:
        importlib.import_module(f"flask_modelguard.{name}")
    except ImportError:
        return False
    return True
