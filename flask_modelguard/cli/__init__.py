"""``flask modelguard ...``: manage accounts and keys from the shell.

Keys are printed once, when they are created; nothing else ever prints a secret.
"""

from __future__ import annotations

from ..admin.cli import register as _register_admin_commands
from . import accounts, detection, schema, worker  # noqa: F401 - their commands join the group
from .base import _friendly, modelguard_cli
from .detection import echo_calibration, progress_bars

__all__ = ["echo_calibration", "modelguard_cli", "progress_bars"]

_register_admin_commands(modelguard_cli, _friendly)
