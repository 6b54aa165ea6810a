"""The domain (`mattermost_connector/`) never imports Prefect: it is plain Python that tasks/
and flows/ wrap, testable without it. `pytest --without-prefect` (`make test-domain`) runs the
domain tests with Prefect unimportable; these tests keep that true."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import DOMAIN_TESTS, is_simulator_test

ROOT = Path(__file__).resolve().parents[1]


def python(code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (nothing imported yet), from the checkout's root."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_no_module_of_the_domain_imports_prefect():
    result = python(
        "import importlib, pkgutil, sys\n"
        "import mattermost_connector as package\n"
        "for module in pkgutil.walk_packages(package.__path__, 'mattermost_connector.'):\n"
        "    importlib.import_module(module.name)\n"
        "    assert 'prefect' not in sys.modules, f'{module.name} imports prefect'\n"
        "    print(module.name)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # every file was imported (the package's own __init__ is not walked)
    files = list((ROOT / "mattermost_connector").rglob("*.py"))
    assert len(result.stdout.split()) == len(files) - 1


def test_the_blocker_makes_prefect_unimportable():
    result = python(
        "import sys\n"
        "from tests.conftest import PrefectBlocker\n"
        "sys.meta_path.insert(0, PrefectBlocker())\n"
        "import prefect\n"
    )
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'prefect' (--without-prefect)" in result.stderr


def test_the_domain_tests_load_with_prefect_unimportable():
    """Every domain test file, and all it imports, loads without Prefect (`make test-domain`
    then runs them: the whole suite runs them too, with Prefect)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--without-prefect", "--collect-only", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    files = set(re.findall(r"^tests/(test_\w+\.py)::", result.stdout, re.MULTILINE))
    simulator = {name for name in files if is_simulator_test(name)}
    assert files - simulator == DOMAIN_TESTS  # all of them, and no other
    assert simulator and not simulator & DOMAIN_TESTS  # the simulator's, counted apart
    assert re.search(r"\(\d+ deselected\)", result.stdout)  # those taking `prefect_api`
