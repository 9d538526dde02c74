"""The suite's CI rule: with CI set, a skipped test fails the run (every test must run there)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def _run_pytest(folder: Path, ci: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_a_skipped_test_fails_the_run_only_in_ci(tmp_path):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_skipping.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    assert 1 + 1 == 2\n\n"
        "def test_skips():\n    pytest.skip('optional dependency missing')\n")
    outside_ci = _run_pytest(tmp_path, ci=False)
    assert outside_ci.returncode == 0, outside_ci.stdout
    in_ci = _run_pytest(tmp_path, ci=True)
    assert in_ci.returncode != 0, in_ci.stdout
    assert "skipped test(s) count as failures" in in_ci.stdout
