"""The evaluation harness: run a scenario of simulated benign users and
thieves against a served model with the guard off, in shadow mode and on;
report detection, clone fidelity, watermark evidence and benign utility
(``flask modelguard evaluate`` or :func:`run`)."""

from .run import run, run_mode
from .scenario import MODES, Scenario, load_scenario

__all__ = ["MODES", "Scenario", "load_scenario", "run", "run_mode"]
