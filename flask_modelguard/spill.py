"""Events a process could not write before it stopped, kept in a local
directory and written by the next process that starts. Framework-free.

At shutdown, when storage is unreachable, the worker hands what is left to
:meth:`SpillDirectory.write`: one JSON-lines file per process and shutdown,
written to a temporary name and renamed, so a reader never sees half a file.
A starting process :meth:`~SpillDirectory.claim`\\ s the files by renaming
them to a name of its own (atomic: two processes never take the same file),
reads them and deletes them; the rows then wait in its worker's queue like
any other (and are spilled again if that process too stops during an outage).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import numpy as np

log = logging.getLogger("flask_modelguard")

_SUFFIX = ".jsonl"


def jsonable(value: Any) -> Any:
    """JSON for what rows hold besides JSON: numpy numbers and arrays, bytes, tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": bytes(value).hex()}
    raise TypeError(f"cannot spill a {type(value).__name__}")


def _restore(obj: dict[str, Any]) -> Any:
    if set(obj) == {"__bytes__"}:
        return bytes.fromhex(obj["__bytes__"])
    return obj


class SpillDirectory:
    """Spill files of unwritten events in ``path`` (created when needed)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, rows: list[dict[str, Any]], kind: str = "events") -> str | None:
        """Store ``rows`` (``kind``: "events", or "states" for account-state
        deltas); returns the file's path (None when there were none)."""
        if not rows:
            return None
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        name = os.path.join(self.path, f"{kind}-{os.getpid()}-{time.time_ns()}")
        with open(name + ".tmp", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=jsonable, separators=(",", ":")) + "\n")
        os.replace(name + ".tmp", name + _SUFFIX)
        return name + _SUFFIX

    def waiting(self) -> bool:
        """Whether spilled files wait to be claimed (a directory listing)."""
        try:
            return any(n.endswith(_SUFFIX) for n in os.listdir(self.path))  # of any kind
        except FileNotFoundError:
            return False

    def claim(self, kind: str = "events") -> list[dict[str, Any]]:
        """Take every spilled file of ``kind`` (renamed first: no other
        process gets it), read and delete it; returns their rows. A file that
        cannot be read is left aside as ``*.bad`` and logged."""
        try:
            names = sorted(n for n in os.listdir(self.path) if n.endswith(_SUFFIX) and n.startswith(f"{kind}-"))
        except FileNotFoundError:
            return []
        rows: list[dict[str, Any]] = []
        for name in names:
            source = os.path.join(self.path, name)
            mine = f"{source}.{os.getpid()}.claimed"
            try:
                os.rename(source, mine)
            except FileNotFoundError:
                continue  # another process took it
            try:
                with open(mine, encoding="utf-8") as fh:
                    found = [json.loads(line, object_hook=_restore) for line in fh if line.strip()]
            except (OSError, ValueError) as exc:
                log.error("modelguard: spilled events in %s unreadable (%s); kept as .bad", name, exc)
                os.replace(mine, source + ".bad")
                continue
            os.unlink(mine)
            rows.extend(found)
        return rows
