"""``make screenshots``: the dashboard of the example app after a small
simulation (a uniform-noise thief and benign users),
photographed in Debian's headless Chromium (driven by Selenium) at desktop
and phone widths, into ``docs/img/``. The browser tests use the same
helpers (``tests/test_dashboard_browser.py``).

    python -m example_app.screenshots [OUT_DIR]
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask_modelguard.simulate import SimulatedClock

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PREFIX = "/modelguard"


def browser_missing() -> str | None:
    """Why the browser cannot run here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install {package})"
    return None


class DayClock(SimulatedClock):
    """Simulated time that starts a day ago and, once :meth:`go_live`, is the
    real time: a day of traffic simulated in seconds, then served live."""

    def __init__(self) -> None:
        super().__init__(time.time() - 86400.0 + 60.0)
        self.live = False

    def __call__(self) -> float:
        return time.time() if self.live else self.now

    def go_live(self) -> None:
        self.live = True


def simulated(instance: str, model_cache: str | None = None, benign: int = 3, budget: int = 60,
              day: bool = False) -> tuple[Any, str, dict]:
    """The example app (its SQLite file in ``instance``) after a small
    simulation, in real time or (``day``) spread over the last day on a
    :class:`DayClock`; returns (app, an admin token, {account: key})."""
    from flask_modelguard.simulate import Simulation, WSGITransport
    from flask_modelguard.simulate.attackers import make_actor

    from . import create_app, guard
    from .model import split
    from .simulation import world

    config: dict[str, Any] = {"SECRET_KEY": "screenshots", "MODELGUARD_SECURE_COOKIES": False,
                              "MODELGUARD_DATABASE_URL": f"sqlite:///{instance}/guard.db"}
    clock = DayClock() if day else None
    if clock is not None:
        config.update(MODELGUARD_CLOCK=clock, MODELGUARD_STORAGE_URI="simulated://",
                      MODELGUARD_STORAGE_OPTIONS={"clock": clock})
    if model_cache:
        config["MODEL_CACHE_DIR"] = model_cache
    app = create_app(config)
    X_train, *_ = split()
    with app.app_context():  # a quick calibration (20 accounts a size)
        guard.fit_reference(X_train.tolist(), app.extensions["digits_model"].predict_proba(X_train).argmax(axis=1),
                            accounts=20)
    actors = [make_actor({"kind": "random-uniform", "name": "thief", "budget": budget})] + \
        [make_actor({"kind": "benign", "name": f"user{i}", "budget": 40}) for i in range(benign)]
    keys = {}
    with app.app_context():
        for actor in actors:
            guard.create_account(actor.name, limits="1000/minute;100000/day")
            keys[(actor.name, 0)] = guard.issue_key(actor.name)
        token = guard.state(app).admin.create_token("ops")
    transport, the_world = WSGITransport(app.test_client()), world(app)
    if clock is None:
        Simulation(transport, the_world, actors, keys, seed=0).run()
    else:
        _a_day(transport, the_world, clock, [a.name for a in actors[1:]], keys, lambda: guard.flush(app))
    guard.flush(app)
    if clock is not None:
        clock.go_live()
    return app, token, {name: key for (name, _), key in keys.items()}


def _a_day(transport: Any, the_world: Any, clock: DayClock, users: list[str], keys: dict,
           flush: Callable[[], None]) -> None:
    """A day of traffic in hourly waves (busier by day), the thief's burst in
    the 20th hour; the worker catches up after each wave (as it would in an hour)."""
    from flask_modelguard.simulate import Simulation
    from flask_modelguard.simulate.attackers import make_actor

    for hour in range(24):
        clock.set(clock.start + hour * 3600.0)
        busy = 1.0 + math.cos(2.0 * math.pi * (hour - 14) / 24.0)  # 0 at 02:00, 2 at 14:00
        wave = [make_actor({"kind": "benign", "name": name, "budget": 2 + int(6 * busy), "interval": 60.0})
                for name in users]
        if hour == 20:
            wave.append(make_actor({"kind": "random-uniform", "name": "thief", "budget": 120, "interval": 20.0}))
        Simulation(transport, the_world, wave, keys, seed=hour, clock=clock).run()
        flush()


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` served over HTTP on loopback (threaded); yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@contextmanager
def chrome(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium window of that size (closed after)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="mg-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def sign_in(driver: Any, base: str, token: str) -> None:
    """Sign in to the dashboard with an admin token."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}{PREFIX}/")
    WebDriverWait(driver, 15).until(EC.url_contains("/login"))
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 15).until(EC.presence_of_element_located((By.ID, "admin-name")))


def full_page(driver: Any, path: str, width: int) -> None:
    """Resize the window to the page's whole height, so one shot holds it."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 120, 6000))
    driver.save_screenshot(path)


PAGES = (("overview", "/?range=day"), ("accounts", "/accounts"), ("account", "/accounts/thief?range=day"),
         ("alerts", "/alerts?show=all"), ("alert", "/alerts/1"))


def main(out: str = "docs/img") -> None:
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as instance:
        app, token, _ = simulated(instance, benign=8, budget=120, day=True)
        with served(app) as base:
            for width, suffix in ((1280, ""), (400, "-phone")):
                with chrome(width, 900) as driver:
                    sign_in(driver, base, token)
                    for name, path in PAGES:
                        driver.get(f"{base}{PREFIX}{path}")
                        full_page(driver, os.path.join(out, f"dashboard-{name}{suffix}.png"), width)
                        print(f"wrote {out}/dashboard-{name}{suffix}.png")
        from . import guard

        guard.close(app)


if __name__ == "__main__":
    main(*sys.argv[1:2])
