"""Spill files: events written at shutdown during an outage, claimed once by the next process."""

from __future__ import annotations

import os

import numpy as np

from flask_modelguard.spill import SpillDirectory


def test_rows_round_trip_with_numpy_values_and_bytes(tmp_path):
    spill = SpillDirectory(str(tmp_path / "spill"))
    rows = [{"n": np.int64(3), "score": np.float32(0.5), "v": np.arange(3), "fp": b"\x00\xff", "labels": [1, "a"]}]
    path = spill.write(rows)
    assert path is not None and os.path.exists(path) and oct(os.stat(tmp_path / "spill").st_mode)[-3:] == "700"
    assert spill.write([]) is None
    assert spill.claim() == [{"n": 3, "score": 0.5, "v": [0, 1, 2], "fp": b"\x00\xff", "labels": [1, "a"]}]
    assert spill.claim() == [] and os.listdir(tmp_path / "spill") == []  # claimed once, then gone


def test_a_file_is_claimed_by_one_process_only(tmp_path):
    a, b = SpillDirectory(str(tmp_path)), SpillDirectory(str(tmp_path))
    a.write([{"n": 1}])
    a.write([{"n": 2}])
    got = a.claim() + b.claim()
    assert sorted(r["n"] for r in got) == [1, 2]


def test_an_unreadable_file_is_set_aside(tmp_path, caplog):
    spill = SpillDirectory(str(tmp_path))
    (tmp_path / "events-1-2.jsonl").write_text('{"n": 1}\n{not json\n')
    spill.write([{"n": 5}])
    assert spill.claim() == [{"n": 5}]  # the good file's rows only, none of the bad one's
    assert os.path.exists(tmp_path / "events-1-2.jsonl.bad") and "unreadable" in caplog.text
    assert SpillDirectory(str(tmp_path / "missing")).claim() == []
