"""evidence.py: watermark records hash-chained per account, on SQLite and
PostgreSQL (writers taking turns: one chain, no fork), exported by
``flask modelguard export-evidence`` and checked offline by
``python -m flask_modelguard.evidence`` in a process of its own."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from typing import Any

import pytest

from flask_modelguard import evidence
from flask_modelguard.cli import modelguard_cli


def _record(n: int, account_id: int = 1) -> dict[str, Any]:
    return {"id": n + 1, "account_id": account_id, "route": "predict", "ts": 100.0 + n, "fingerprint": f"fp{n % 7}",
            "input": [float(n), 0.25], "served_label": n % 10, "model_label": 3, "n_classes": 10}


def _bundle(records: list[dict[str, Any]]) -> dict[str, Any]:
    links = evidence.chain(records)
    return evidence.bundle("acme", [{**r, "chain": c} for r, c in zip(records, links)], "2026-12-03T00:00:00+00:00")


def test_any_change_breaks_the_chain_from_there():
    records = [_record(n) for n in range(6)]
    good = _bundle(records)
    assert evidence.check(good).valid and evidence.check(good).head == good["head"] != evidence.GENESIS
    published = good["records"][2]["chain"]  # a head published when there were 3 records
    assert evidence.check(good, published).has_head is True
    for tamper, broken in (
        (lambda b: b["records"][3].update(served_label=9), 3),  # an answer changed
        (lambda b: b["records"].pop(1), 1),  # a record removed
        (lambda b: b["records"].insert(4, {**b["records"][4], "ts": 1.0}), 4),  # one slipped in
        (lambda b: b["records"].reverse(), 0),
        (lambda b: b.update(head=evidence.GENESIS), 6),  # the head does not match the records
    ):
        bad = copy.deepcopy(good)
        tamper(bad)
        assert evidence.check(bad).broken_at == broken and not evidence.check(bad).valid
    rebuilt = _bundle([{**r, "served_label": 0} for r in records])  # a chain made up anew from scratch
    assert evidence.check(rebuilt).valid and evidence.check(rebuilt, published).has_head is False
    assert not evidence.check(rebuilt, published).valid
    with pytest.raises(ValueError):
        evidence.check({"records": []})


def test_the_ownership_test_on_a_bundle_asks_each_input_once():
    good = _bundle([_record(n) for n in range(14)])  # 7 distinct inputs, each served twice
    probes = evidence.probes(good)
    assert [p["fingerprint"] for p in probes] == [f"fp{n}" for n in range(7)]
    copied = evidence.ownership_test(good, [p["served_label"] for p in probes])
    assert (copied.matches, copied.probes) == (7, 7) and copied.null_rate == pytest.approx(1 / 9)
    honest = evidence.ownership_test(good, [3] * 7)
    assert honest.matches == 1 and not honest.claimed  # fp3's served label is 3 by chance


def _rows(account_id: int, start: int, n: int) -> list[dict[str, Any]]:
    base = {"key_id": 1, "route": "predict", "status": 200, "latency_ms": 1.0, "n_instances": 1, "fingerprint": None,
            "labels": None, "top_confidences": None, "input": None, "canary": False}
    marks = [{k: v for k, v in _record(start + i, account_id).items() if k != "id"} for i in range(n)]
    return [{**base, "account_id": account_id, "ts": 1000.0 + start + i,
             "watermarks": [{**marks[i], "fingerprint": f"w{start + i}"}]} for i in range(n)]


def at_once(write: Any, workers: int) -> list[BaseException]:
    """``write(worker)`` in ``workers`` threads at once; what they raised."""
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            write(worker)
        except BaseException as exc:  # noqa: BLE001  (returned)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_writers_at_once_make_one_chain(make_guarded):
    g = make_guarded()
    name, _ = g.account("contested")
    repository = g.guard.state(g.app).repository
    account_id = repository.get_account(name)["id"]

    def write(worker: int) -> None:
        for batch in range(10):
            repository.insert_events(_rows(account_id, 1000 * worker + 10 * batch, 3))

    assert at_once(write, 4) == []
    records = repository.evidence_records(name)
    assert len(records) == 4 * 10 * 3
    found = evidence.check(evidence.bundle(name, records, "now"))
    assert found.valid, found.summary()  # every link follows the one before: no two writers forked it


def test_export_evidence_and_check_it_offline(make_guarded, tmp_path):
    g = make_guarded(MODELGUARD_WATERMARK=1.0)  # every answer a watermark answer
    name, key = g.account("thief", limits="1000/second")
    served = [g.predict(key, {"features": [float(i), 2.0]}).get_json()["label"] for i in range(25)]
    g.guard.flush(g.app)
    out = tmp_path / "evidence.json"
    result = g.app.test_cli_runner().invoke(modelguard_cli, ["export-evidence", name, str(out)])
    assert result.exit_code == 0 and "25 records of 'thief'; chain head" in result.output, result.output
    bundle = json.loads(out.read_text())
    head = bundle["head"]
    assert result.output.strip().endswith(head)
    assert [r["served_label"] for r in bundle["records"]] == served
    labels = tmp_path / "suspect.json"
    labels.write_text(json.dumps(served))  # a clone that learned every mark
    offline = subprocess.run([sys.executable, "-m", "flask_modelguard.evidence", str(out), "--labels", str(labels),
                              "--head", bundle["records"][9]["chain"]], capture_output=True, text=True, timeout=60)
    assert offline.returncode == 0, offline.stderr
    assert "chain of 25 records valid" in offline.stdout and "passes through the published head" in offline.stdout
    assert "25/25 keyed wrong labels reproduced" in offline.stdout and "CLAIMED" in offline.stdout
    bundle["records"][0]["served_label"] = (bundle["records"][0]["served_label"] + 1) % 10
    out.write_text(json.dumps(bundle))
    tampered = subprocess.run([sys.executable, "-m", "flask_modelguard.evidence", str(out)],
                              capture_output=True, text=True, timeout=60)
    assert tampered.returncode == 1 and "BROKEN at record 0" in tampered.stdout
    entry = g.guard.state(g.app).admin.audit_entries()[0][0]
    assert entry["action"] == "export-evidence" and entry["after"] == {"records": 25, "head": head}


def test_a_clock_giving_whole_seconds_links_what_the_database_gives_back():
    written = {**_record(0), "ts": 1_700_000_000}  # an int, as a custom clock may give
    read_back = {**written, "ts": 1_700_000_000.0}  # the Float column's answer
    assert evidence.link(evidence.GENESIS, written) == evidence.link(evidence.GENESIS, read_back)
