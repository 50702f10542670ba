"""The guard's cost per request in an evaluation, through the test client."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..runtime import state_of
from ..simulate.actor import World
from .scenario import MODES, Scenario, import_string


def latency(scenario: Scenario, workdir: str) -> dict[str, Any]:
    """The guard's cost per request: the same single-input request to the
    scenario's app with the guard off (``MODELGUARD_ENABLED=False``: bare) and
    with its default policy, interleaved in rounds; medians in ms. The
    test client's times (no network); see benchmarks/overhead.py for more."""
    bodies: dict[str, Any] = {}
    clients = {}
    apps = []
    for mode in ("off", "default"):
        config = {**scenario.config, **MODES[mode], "MODELGUARD_CREATE_TABLES": True,
                  "MODELGUARD_DATABASE_URL": f"sqlite:///{os.path.join(workdir, 'latency-' + mode)}.db"}
        app = import_string(scenario.app)(config)
        apps.append(app)
        world: World = import_string(scenario.world)(app)
        key = "none"
        if mode != "off":
            with app.app_context():
                guard = state_of(app).guard
                guard.create_account("latency", limits="100000000/day")
                key = guard.issue_key("latency")
        bodies[mode] = ({"instances": world.pool[:1].tolist()}, {"X-API-Key": key})
        clients[mode] = app.test_client()
    times: dict[str, list[float]] = {"off": [], "default": []}
    rounds, per_round = 10, max(1, scenario.latency_requests // 10)
    for r in range(rounds + 1):
        for mode in (("off", "default") if r % 2 else ("default", "off")):
            body, headers = bodies[mode]
            for _ in range(per_round):
                started = time.perf_counter()
                response = clients[mode].post(scenario.path, json=body, headers=headers)
                elapsed = time.perf_counter() - started
                if r and response.status_code == 200:  # round 0 warms up
                    times[mode].append(elapsed)
    for app in apps:
        state_of(app).close()
    bare, guarded = float(np.median(times["off"])) * 1e3, float(np.median(times["default"])) * 1e3
    return {"bare_ms": bare, "guarded_ms": guarded, "ratio": guarded / bare, "requests": len(times["default"])}
