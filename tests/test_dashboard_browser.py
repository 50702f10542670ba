"""The dashboard in a real browser: Debian's headless Chromium driven by
Selenium, against the example app served over HTTP after a small simulation
(a uniform-noise thief and three benign users). Skipped, saying why, where
Chromium, its driver or Selenium is missing (``.ci/run`` installs them where
``apt-get`` is there)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest

from example_app.screenshots import PREFIX, browser_missing, chrome, served, sign_in, simulated

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")


@pytest.fixture
def example(tmp_path, model_cache):
    from example_app import guard

    app, token, keys = simulated(str(tmp_path), model_cache)
    yield app, token, keys
    guard.close(app)


def answer(base: str, key: str, features: list[float]) -> tuple[int, Any]:
    """The status and headers of one prediction request over HTTP."""
    request = urllib.request.Request(f"{base}/predict", data=json.dumps({"features": features}).encode(),
                                     headers={"Content-Type": "application/json", "X-API-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.headers
    except urllib.error.HTTPError as refused:
        return int(refused.code), refused.headers


def predict(base: str, key: str, features: list[float]) -> int:
    return answer(base, key, features)[0]


def _by(kind: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def wait_url(driver: Any, part: str) -> None:
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(EC.url_contains(part))


def wait_text(driver: Any, element_id: str, text: str) -> None:
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(EC.text_to_be_present_in_element((_by("ID"), element_id), text))


def test_a_thief_found_by_search_unflagged_allowlisted_and_rekeyed(example, tmp_path):
    app, token, keys = example
    css, by_id = _by("CSS_SELECTOR"), _by("ID")
    with served(app) as base, chrome() as driver:
        sign_in(driver, base, token)
        # the overview: three charts over time, the thief first among the flagged, its alert
        assert len(driver.find_elements(css, "svg.overtime")) == 3
        with app.app_context():
            logged = app.extensions["modelguard"].repository.engine.connect().exec_driver_sql(
                "SELECT count(*) FROM modelguard_query_events").scalar()
        assert int(driver.find_element(by_id, "total-requests").text) == logged > 0
        assert driver.find_element(css, "#flagged tbody tr td.name").text == "thief"
        assert "ADD" in driver.find_element(by_id, "alerts").text
        driver.save_screenshot(str(tmp_path / "overview.png"))
        # find it by search
        driver.find_element(by_id, "nav-accounts").click()
        wait_url(driver, "/accounts")
        driver.find_element(by_id, "q").send_keys("thi")
        driver.find_element(by_id, "search").click()
        wait_url(driver, "q=thi")
        rows = driver.find_elements(css, "#accounts tbody tr")
        assert len(rows) == 1 and rows[0].find_element(css, "td.flag").text == "flagged"
        rows[0].find_element(css, "td.name a").click()
        wait_text(driver, "account-name", "thief")
        # its timeline, evidence and queries
        assert driver.find_elements(css, "#chart-score circle.flag")
        assert "ADD" in driver.find_element(by_id, "reasons").text
        assert driver.find_elements(css, "#evidence rect.bar.over")
        shown = [int(td.text) for td in driver.find_elements(css, "#events tbody td[data-label=inputs]")]
        assert sum(shown) == 60  # its requests (batches of inputs), every input counted
        driver.find_element(by_id, "unflag").click()
        wait_text(driver, "flag", "not flagged")
        driver.find_element(by_id, "allowlist").click()
        wait_text(driver, "flag", "allow-listed")
        # allow-listed: more of the same queries, and the detectors leave it alone
        noise = np.random.default_rng(1).uniform(0, 16, size=(60, 64))
        assert [predict(base, keys["thief"], row.tolist()) for row in noise] == [200] * 60
        app.extensions["modelguard"].guard.flush(app)
        driver.refresh()
        assert driver.find_element(by_id, "flag").text == "not flagged · allow-listed"
        # rotate its key, the old one ending at once
        grace = driver.find_element(css, "#keys input[name=grace]")
        grace.clear()
        grace.send_keys("0")
        driver.find_element(css, "#keys button.rotate").click()
        wait_text(driver, "content", "New key for thief")
        new_key = driver.find_element(by_id, "new-key").text
        assert predict(base, keys["thief"], noise[0].tolist()) == 401  # rotated, no grace: expired
        assert predict(base, new_key, noise[0].tolist()) == 200
        driver.find_element(by_id, "back-to-account").click()
        wait_text(driver, "account-name", "thief")
        assert [c.text for c in driver.find_elements(css, "#keys td.key-state")] == ["expired", "live"]
        # its alert: why, the timeline, acknowledge
        driver.find_element(by_id, "nav-alerts").click()
        wait_url(driver, "/alerts")
        driver.find_element(css, "#alerts tbody tr td a").click()
        wait_text(driver, "alert-account", "thief")
        assert "ADD" in driver.find_element(by_id, "alert-reason").text
        assert driver.find_elements(css, "#evidence rect.bar.over") and driver.find_elements(css, "#chart-score circle")
        driver.find_element(by_id, "ack").click()
        wait_text(driver, "content", "acknowledged by ops")
    with app.app_context():
        entries = app.extensions["modelguard"].admin.audit_entries()[0]
    assert [(e["action"], e["target"], e["actor"]) for e in entries[:4]][::-1] == [
        ("update-account", "thief", "ops"), ("update-account", "thief", "ops"),
        ("rotate-key", keys["thief"].split("_")[1], "ops"), ("acknowledge-alert", entries[0]["target"], "ops")]
    assert entries[2]["after"] == {"allowlisted": True} and entries[3]["after"] == {"flagged": False}


PAGES = ("/", "/accounts", "/accounts/thief", "/alerts?show=all")

_UNLABELLED = """return [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
  .map(e => e.outerHTML);"""


_LOW_CONTRAST = """
const lum = c => { const [r, g, b] = c.match(/[\\d.]+/g).slice(0, 3).map(v => {
  v = v / 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
const opaque = c => !/rgba\\(.*, 0\\)$/.test(c) && c !== 'transparent';
const out = [];
for (const e of document.querySelectorAll('body *')) {
  if (e.closest('svg') || ![...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
  let p = e, bg = 'rgb(255, 255, 255)';
  while (p) { const c = getComputedStyle(p).backgroundColor; if (opaque(c)) { bg = c; break; } p = p.parentElement; }
  const [a, b] = [lum(getComputedStyle(e).color), lum(bg)].sort((x, y) => y - x);
  const ratio = (a + 0.05) / (b + 0.05);
  if (ratio < 4.5 && e.offsetParent !== null) out.push(e.tagName + ' ' + e.textContent.trim().slice(0, 30) + ' ' + ratio.toFixed(2));
}
return out;"""


def test_readable_at_400px_and_usable_from_the_keyboard(example, tmp_path):
    app, token, _ = example
    with served(app) as base, chrome(400, 900) as driver:
        sign_in(driver, base, token)
        alert = driver.find_element(_by("CSS_SELECTOR"), "#alerts tbody tr td a").get_attribute("href")
        for path in (*PAGES, alert.split(PREFIX, 1)[1]):
            driver.get(f"{base}{PREFIX}{path}")
            wide = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            assert wide[0] <= wide[1], (path, wide)  # nothing scrolls sideways
            assert driver.execute_script(_UNLABELLED) == [], path  # every field has a label
            assert driver.execute_script(_LOW_CONTRAST) == [], path  # WCAG AA: text at least 4.5:1
        driver.save_screenshot(str(tmp_path / "narrow.png"))
        from selenium.webdriver.common.keys import Keys

        driver.get(f"{base}{PREFIX}/accounts")
        body = driver.find_element(_by("TAG_NAME"), "body")
        body.send_keys(Keys.TAB)
        skip = driver.switch_to.active_element
        assert skip.text == "Skip to content" and skip.is_displayed()
        skip.send_keys(Keys.ENTER)
        assert driver.current_url.endswith("#content")
        for _ in range(40):  # tab on to the search field: reachable from the keyboard
            driver.switch_to.active_element.send_keys(Keys.TAB)
            if driver.switch_to.active_element.get_attribute("id") == "q":
                break
        driver.switch_to.active_element.send_keys("user1", Keys.ENTER)
        wait_url(driver, "q=user1")
        rows = driver.find_elements(_by("CSS_SELECTOR"), "#accounts tbody tr td.name")
        assert [r.text for r in rows] == ["user1"]


def test_every_other_action_from_the_browser(example, tmp_path):
    """Create an account with its key, change its limits, issue and revoke
    keys, block it, verify a suspect from uploaded labels: each over HTTP."""
    app, token, keys = example
    css, by_id = _by("CSS_SELECTOR"), _by("ID")
    x = [1.0] * 64
    with served(app) as base, chrome() as driver:
        sign_in(driver, base, token)
        driver.get(f"{base}{PREFIX}/accounts")
        driver.find_element(by_id, "new-name").send_keys("partner")
        driver.find_element(by_id, "new-limits").send_keys("5/minute")
        driver.find_element(by_id, "create").click()
        wait_text(driver, "content", "Account partner created.")
        first = driver.find_element(by_id, "new-key").text
        status, headers = answer(base, first, x)
        assert status == 200 and headers["X-RateLimit-Limit"] == "5"
        driver.find_element(by_id, "back-to-account").click()
        wait_text(driver, "account-name", "partner")
        limits = driver.find_element(by_id, "plan-limits")
        limits.clear()
        limits.send_keys("9/minute")
        driver.find_element(by_id, "save-plan").click()
        wait_text(driver, "content", "own limits 9/minute")
        assert answer(base, first, x)[1]["X-RateLimit-Limit"] == "9"
        driver.find_element(by_id, "issue-key").click()
        wait_text(driver, "content", "shown only once")
        second = driver.find_element(by_id, "new-key").text
        driver.find_element(by_id, "back-to-account").click()
        wait_text(driver, "account-name", "partner")
        driver.find_elements(css, "#keys button.revoke")[0].click()  # the first key
        wait_text(driver, "content", "revoked")
        assert predict(base, first, x) == 403 and predict(base, second, x) == 200
        driver.find_element(by_id, "block").click()
        wait_text(driver, "status", "blocked")
        assert predict(base, second, x) == 403
        # the thief's watermark inputs, answered by a "suspect" that copies what the thief was served
        with app.app_context():
            records = app.extensions["modelguard"].repository.watermark_records("thief")
        labels = tmp_path / "suspect.json"
        labels.write_text(json.dumps([r["served_label"] for r in records]))
        driver.get(f"{base}{PREFIX}/accounts/thief")
        driver.find_element(by_id, "suspect-predictions").send_keys(str(labels))
        driver.find_element(by_id, "verify").click()
        wait_text(driver, "content", "wrong answers reproduced")
        assert int(driver.find_element(by_id, "matches").text) == len(records)
        assert int(driver.find_element(by_id, "probes").text) == len(records)
    with app.app_context():
        actions = [e["action"] for e in app.extensions["modelguard"].admin.audit_entries()[0][:7]][::-1]
    assert actions == ["create-account", "issue-key", "update-account", "issue-key", "revoke-key",
                       "update-account", "verify-watermark"]
