"""An example model server protected by ModelGuard.

    POST /predict  {"features": [64 numbers]}      -> {"label": int, "probabilities": [10 floats]}
    POST /predict  {"instances": [[64 numbers], ...]} -> {"predictions": [{"label", "probabilities"}, ...]}

Run it with ``python -m example_app`` (development server, demo key printed) or
``gunicorn -w 4 'example_app:create_app()'``. ``MODELGUARD_*`` environment
variables configure the guard (values are parsed as JSON when they can be);
``SECRET_KEY`` and ``MODEL_CACHE_DIR`` are read from the environment too, and
``EXAMPLE_INSTANCE_PATH`` (an absolute path) replaces the instance folder
(``instance/`` beside the package: the guard's SQLite file, the secret, the model).
Every answer carries its account's probability mark (``MODELGUARD_PROBABILITY_MARK``
0.2: labels kept, probabilities less sharp; 0 turns it off).
"""

from __future__ import annotations

import functools
import json
import os
import secrets
from dataclasses import fields
from typing import Any

import numpy as np
from flask import Flask, request

from flask_modelguard import BadRequest, ModelGuard, Problem, Settings, problem_response, protect

from .model import N_FEATURES, load_model, split

MAX_BATCH = 256

guard = ModelGuard()


def _env_config(prefix: str = "MODELGUARD_") -> dict[str, Any]:
    """``MODELGUARD_*`` environment variables: text settings as given, the others
    parsed as JSON (numbers, booleans, objects)."""
    text = {f"{prefix}{f.name.upper()}" for f in fields(Settings) if "str" in str(f.type)}
    config: dict[str, Any] = {}
    for name, value in os.environ.items():
        if not name.startswith(prefix):
            continue
        if name in text and not value.startswith(("{", "[")):
            config[name] = value
            continue
        try:
            config[name] = json.loads(value)
        except ValueError:
            config[name] = value
    return config


def _secret_key(instance_path: str) -> str:
    """A per-installation secret shared by all worker processes (created once:
    written to a temporary file, then linked into place, so a concurrent
    reader never sees a half-written key)."""
    path = os.path.join(instance_path, "secret_key")
    os.makedirs(instance_path, exist_ok=True)
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # fails if another process got there first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path) as fh:
        return fh.read().strip()


def _vector(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, list) or len(value) != N_FEATURES:
        raise BadRequest(f"{where} must be a list of {N_FEATURES} numbers.")
    try:
        x = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # (integers beyond float range overflow)
        raise BadRequest(f"{where} must be a list of {N_FEATURES} numbers.") from None
    if x.shape != (N_FEATURES,) or not np.isfinite(x).all():
        raise BadRequest(f"{where} must be a list of {N_FEATURES} finite numbers.")
    return np.clip(x, 0.0, 16.0)  # pixel intensities: the model's input range


def _prediction(probs: np.ndarray) -> dict[str, Any]:
    return {"label": int(probs.argmax()), "probabilities": probs.tolist()}


def predict_view(model: Any) -> Any:
    """The ``/predict`` view of ``model``, unprotected."""

    def predict() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise BadRequest('Send a JSON object: {"features": [...]} or {"instances": [[...], ...]}.')
        if "features" in body and "instances" in body:
            raise BadRequest('Send "features" or "instances", not both.')
        if "features" in body:
            x = _vector(body["features"], "features")
            return _prediction(model.predict_proba(x[None, :])[0])
        if "instances" in body:
            rows = body["instances"]
            if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_BATCH:
                raise BadRequest(f"instances must be a list of 1 to {MAX_BATCH} inputs.")
            X = np.stack([_vector(r, f"instances[{i}]") for i, r in enumerate(rows)])
            return {"predictions": [_prediction(p) for p in model.predict_proba(X)]}
        raise BadRequest('The body needs "features" or "instances".')

    return predict


def reference(model: Any) -> tuple[list[list[float]], list[int]]:
    """ADD's reference: the training digits and the model's labels for them
    (the owner's known-good data; fitted once, stored with the guard's tables)."""
    X_train = split()[0]
    return X_train.tolist(), model.predict_proba(X_train).argmax(axis=1).tolist()


def create_app(config: dict[str, Any] | None = None, *, guarded: bool = True) -> Flask:
    """The example server; ``guarded=False`` builds the same app without ModelGuard
    (the baseline of ``benchmarks/overhead.py``)."""
    app = Flask(__name__, instance_relative_config=True,
                instance_path=os.environ.get("EXAMPLE_INSTANCE_PATH") or None)
    # 100 inputs of 64 numbers are about 30 KB: nothing this API answers needs more than 1 MiB.
    # `make run` serves plain HTTP on 127.0.0.1: the dashboard's cookie cannot be HTTPS-only
    # there (set MODELGUARD_SECURE_COOKIES=true behind TLS).
    app.config.update(MODELGUARD_CREATE_TABLES=True, MAX_CONTENT_LENGTH=2**20, MODELGUARD_SECURE_COOKIES=False)
    app.config.update(_env_config())
    for name in ("SECRET_KEY", "MODEL_CACHE_DIR"):
        if os.environ.get(name):
            app.config[name] = os.environ[name]
    if config:
        app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _secret_key(app.instance_path)
    model = load_model(app.config.get("MODEL_CACHE_DIR") or app.instance_path)
    app.extensions["digits_model"] = model
    app.config.setdefault("MODELGUARD_FEATURES", model.features)  # detectors compare hidden activations
    app.config.setdefault("MODELGUARD_REFERENCE", functools.partial(reference, model))  # ADD from the first request
    # Every answer carries its account's probability mark (labels kept): clones of the probabilities are provable.
    app.config.setdefault("MODELGUARD_PROBABILITY_MARK", 0.2)
    view = predict_view(model)
    if guarded:
        guard.init_app(app)
        view = protect(view)
    else:
        app.register_error_handler(Problem, problem_response)
    app.add_url_rule("/predict", view_func=view, methods=["POST"])

    @app.get("/health")
    def health() -> Any:
        return {"status": "ok"}

    return app
