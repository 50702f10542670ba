"""``import flask_modelguard`` stays light: scipy and scikit-learn (most of a
second to import) are imported by the functions that use them, on first use."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("scipy", "sklearn")


def _modules_after(code: str) -> set[str]:
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_importing_the_package_imports_neither_scipy_nor_sklearn():
    loaded = _modules_after("import flask_modelguard")
    assert "flask_modelguard" in loaded
    assert not loaded & set(HEAVY), f"imported at `import flask_modelguard`: {sorted(loaded & set(HEAVY))}"


def test_the_extension_and_the_detectors_import_them_lazily():
    """Building an app with the guard, and importing the detectors, does not
    need scipy either; PRADA's test imports it when it first computes a W."""
    loaded = _modules_after(
        "from flask import Flask\n"
        "import flask_modelguard, flask_modelguard.detectors, flask_modelguard.detectors.add\n"
        "import flask_modelguard.detectors.population, flask_modelguard.detectors.anomaly\n"
        "import flask_modelguard.monitor, flask_modelguard.worker, flask_modelguard.cli\n"
    )
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_prada_imports_scipy_on_first_use():
    loaded = _modules_after(
        "import numpy as np\n"
        "from flask_modelguard.detectors.prada import shapiro_w\n"
        "assert 'scipy' not in sys.modules\n"
        "assert 0.9 < shapiro_w(np.random.default_rng(0).normal(size=200)) <= 1\n"
    )
    assert "scipy" in loaded
