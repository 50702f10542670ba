"""Reading and writing the guard's tables. Framework-free: takes an Engine.

The repository only reads and writes; what to flag is decided by
:mod:`flask_modelguard.policy` and handed in. Its parts, one per kind of row:
:mod:`.accounts` (accounts, keys, admin listings), :mod:`.events` (query
events, scores, watermark records), :mod:`.detection` (states, reference,
training, fitted models, canaries), :mod:`.groups` (colluding groups).
"""

from __future__ import annotations

from .base import STATUSES
from .detection import DetectionRows
from .groups import GroupRows

__all__ = ["STATUSES", "Repository"]


class Repository(GroupRows, DetectionRows):
    """Accounts, keys, query events and the detectors' data in SQL."""
