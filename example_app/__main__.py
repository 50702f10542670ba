"""``python -m example_app``: serve the example with a fresh demo key.

Each start revokes the previous demo keys and issues a new one, so no key is
ever stored in clear; the new key is printed with a ready-to-run curl command.
The first start also calibrates the guard's detectors on the model (the
trained set is stored with the guard's tables; later starts reuse it);
``EXAMPLE_CALIBRATE=0`` skips that (a smoke test of something else, where
detection may run degraded).
"""

from __future__ import annotations

import json
import os

from flask_modelguard import NotFound

from . import create_app, guard
from .model import split


def demo_key(app) -> str:
    with app.app_context():
        try:
            for key in guard.list_keys("demo"):
                if key["revoked_at"] is None:
                    guard.revoke_key(key["prefix"])
        except NotFound:
            guard.create_account("demo", tier="free")
        return guard.issue_key("demo")


def calibrated(app) -> None:
    """Calibrate the detectors once per installation (``flask modelguard calibrate``)."""
    from flask_modelguard import ModelGuard
    from flask_modelguard.cli import echo_calibration, progress_bars

    state = ModelGuard.state(app)
    if state.monitor.ensemble is not None or not state.settings.detection:
        return
    if os.environ.get("EXAMPLE_CALIBRATE", "1") == "0":
        print("EXAMPLE_CALIBRATE=0: not calibrating; detection runs without the trained ensemble "
              "(degraded: see /modelguard/api/health)", flush=True)
        return
    print("First start: calibrating the guard's detectors on this model (once; about a minute)...", flush=True)
    progress, finish = progress_bars("calibration")
    with app.app_context():
        try:
            result = guard.calibrate(app, progress=progress)
        finally:
            finish()
    echo_calibration(result)


def main() -> None:
    app = create_app()
    calibrated(app)
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "5000"))
    key = demo_key(app)
    _, X_test, _, y_test = split()
    body = json.dumps({"features": [int(v) for v in X_test[0]]})
    print(
        f"\nExample model server protected by ModelGuard on http://{host}:{port}\n"
        f"Demo API key (shown once, replaced on every start): {key}\n\n"
        f"Try it (true label {int(y_test[0])}):\n"
        f"  curl -s -X POST http://{host}:{port}/predict -H 'Authorization: Bearer {key}' \\\n"
        f"       -H 'Content-Type: application/json' -d '{body}'\n",
        flush=True,
    )
    app.run(host=host, port=port)


if __name__ == "__main__":
    main()
