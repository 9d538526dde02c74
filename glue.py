"""GLUE tasks for the BERT-and-PALs port: registry, readers, features, sampling, metrics.

Pure data and task logic, importable and free of any CLI. The training script
(run_multi_task.py) builds on it. Section numbers refer to the reference
specification of the original code (spec 3.2 task registry, 3.3 readers,
3.4 features, 3.7 sampling, 3.10 metrics).

What goes beyond the original: WNLI, MNLI-mismatched, test sets and the
diagnostic (AX) set, GLUE submission files, corpus-level metrics (MCC, F1,
Spearman), any task subset, working round robin, and clear errors for bad data.
The original's per-batch metric is kept as ``original_batch_metric`` for exact
replication.
"""
from __future__ import annotations

import codecs
import csv
import os
import random
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(ValueError):
    """Bad input data; message is one line naming file and line."""


# ---------------------------------------------------------------------------
# Task registry (spec 3.2, extended with WNLI)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    """Static description of one GLUE task."""

    name: str            # short key used throughout the code (the original's names)
    folder: str          # folder under the GLUE data directory
    labels: tuple        # label strings in class-id order; () for regression
    metric_names: tuple  # the task's official GLUE metrics
    dev_splits: tuple    # dev files to evaluate on

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        """Number of classifier outputs (1 for the regression task)."""
        return len(self.labels) if self.labels else 1


_BINARY = ("0", "1")
_NLI3 = ("contradiction", "entailment", "neutral")
_NLI2 = ("not_entailment", "entailment")

TASKS: dict[str, TaskSpec] = {
    "cola": TaskSpec("cola", "CoLA", _BINARY, ("mcc",), ("dev",)),
    "mrpc": TaskSpec("mrpc", "MRPC", _BINARY, ("acc", "f1"), ("dev",)),
    "mnli": TaskSpec("mnli", "MNLI", _NLI3, ("acc",), ("dev_matched", "dev_mismatched")),
    "rte": TaskSpec("rte", "RTE", _NLI2, ("acc",), ("dev",)),
    "sts": TaskSpec("sts", "STS-B", (), ("pearson", "spearman"), ("dev",)),
    "sst": TaskSpec("sst", "SST-2", _BINARY, ("acc",), ("dev",)),
    "qqp": TaskSpec("qqp", "QQP", _BINARY, ("acc", "f1"), ("dev",)),
    "qnli": TaskSpec("qnli", "QNLI", _NLI2, ("acc",), ("dev",)),
    "wnli": TaskSpec("wnli", "WNLI", _BINARY, ("acc",), ("dev",)),
}

ORIGINAL_TASK_ORDER = ("cola", "mrpc", "mnli", "rte", "sts", "sst", "qqp", "qnli")
INF_TASK_ORDER = ("qnli", "mnli", "rte")

# The original's hard-coded size vector (spec 3.7): int(N / 32 * 25) for the
# 2019 training-set sizes. Only the proportions matter.
ORIGINAL_SIZES: dict[str, int] = {
    "cola": 6680, "mrpc": 2865, "mnli": 306798, "rte": 1945,
    "sts": 4491, "sst": 52616, "qqp": 284257, "qnli": 84715,
}

TASK_ALIASES: dict[str, str] = {
    **{spec.folder.lower(): name for name, spec in TASKS.items()},
    "stsb": "sts", "sst2": "sst", "sts_b": "sts", "sst_2": "sst",
}


def _canonical_task(name: str) -> str:
    """Map a task name or alias (any case) to its registry key, or raise ValueError."""
    key = name.strip().lower()
    key = TASK_ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return key


def resolve_task_names(tasks_arg: str, task_id: int | None = None) -> list[str]:
    """Turn the --tasks argument into an ordered list of task keys.

    "all", "single" (with task_id indexing the 'all' order) and "inf" are the
    original's sets; anything else is a comma-separated list of names or aliases.
    """
    preset = tasks_arg.strip().lower()
    if preset == "all":
        return list(ORIGINAL_TASK_ORDER)
    if preset == "inf":
        return list(INF_TASK_ORDER)
    if preset == "single":
        return [_single_task(task_id)]
    names = [_canonical_task(part) for part in _split_task_list(tasks_arg)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"task listed more than once: {', '.join(duplicates)}")
    return names


def _single_task(task_id: int | None) -> str:
    """The task at position task_id of the 'all' order (the original's --tasks single)."""
    if task_id is None:
        raise ValueError("--tasks single needs a task id")
    try:
        index = int(task_id)  # the original's --task_id arrives as a string
    except ValueError:
        raise ValueError(f"task id must be an integer, got {task_id!r}") from None
    if not 0 <= index < len(ORIGINAL_TASK_ORDER):
        raise ValueError(f"task id {task_id} out of range 0..{len(ORIGINAL_TASK_ORDER) - 1}")
    return ORIGINAL_TASK_ORDER[index]


def _split_task_list(tasks_arg: str) -> list[str]:
    parts = [part.strip() for part in tasks_arg.split(",")]
    if not any(parts) or not all(parts):
        raise ValueError(f"bad task list {tasks_arg!r}: expected comma-separated task names")
    return parts


# ---------------------------------------------------------------------------
# Reading GLUE TSV files (spec 3.3, plus test, MNLI-mm, WNLI and diagnostic)
# ---------------------------------------------------------------------------

@dataclass
class InputExample:
    """One example as read from a GLUE file; label is None for test sets."""

    guid: str
    text_a: str
    text_b: str | None
    label: str | None


@dataclass(frozen=True)
class _Layout:
    """Where the fields of one GLUE file live (column indexes; -1 = last column)."""

    n_fields: int              # fields a row must have (the real file's column count)
    text_a: int
    text_b: int | None = None
    label: int | None = None   # None for unlabelled files
    guid_column: int | None = None  # None: guid "<split>-<line index>" as the original
    header: bool = True
    drop_other_widths: bool = False  # QQP: silently drop rows with != n_fields (original)


# Train and dev files: the original's processors (spec 3.3); WNLI as GLUE ships it.
_LABELLED_LAYOUTS = {
    "cola": _Layout(4, text_a=3, label=1, header=False),
    "sst": _Layout(2, text_a=0, label=1),
    "mrpc": _Layout(5, text_a=3, text_b=4, label=0),
    "sts": _Layout(10, text_a=7, text_b=8, label=-1),
    "qqp": _Layout(6, text_a=3, text_b=4, label=-1, drop_other_widths=True),
    "qnli": _Layout(4, text_a=1, text_b=2, label=-1),
    "rte": _Layout(4, text_a=1, text_b=2, label=-1),
    "wnli": _Layout(4, text_a=1, text_b=2, label=-1),
}
# MNLI: train has 12 columns, dev 16 (five annotator labels); guid from column 0.
_MNLI_TRAIN = _Layout(12, text_a=8, text_b=9, label=-1, guid_column=0)
_MNLI_DEV = _Layout(16, text_a=8, text_b=9, label=-1, guid_column=0)

# Test files: a header, the index first (it becomes the guid), no label.
_TEST_LAYOUTS = {
    "cola": _Layout(2, text_a=1, guid_column=0),
    "sst": _Layout(2, text_a=1, guid_column=0),
    "mrpc": _Layout(5, text_a=3, text_b=4, guid_column=0),
    "sts": _Layout(9, text_a=7, text_b=8, guid_column=0),
    "qqp": _Layout(3, text_a=1, text_b=2, guid_column=0),
    "mnli": _Layout(10, text_a=8, text_b=9, guid_column=0),
    "qnli": _Layout(3, text_a=1, text_b=2, guid_column=0),
    "rte": _Layout(3, text_a=1, text_b=2, guid_column=0),
    "wnli": _Layout(3, text_a=1, text_b=2, guid_column=0),
}
_DIAGNOSTIC_LAYOUT = _Layout(3, text_a=1, text_b=2, guid_column=0)

_MNLI_SPLIT_ALIASES = {"dev": "dev_matched", "test": "test_matched"}
_MNLI_SPLITS = ("train", "dev_matched", "dev_mismatched", "test_matched",
                "test_mismatched", "diagnostic")
_PLAIN_SPLITS = ("train", "dev", "test")


def read_examples(data_dir, task: str, split: str) -> list[InputExample]:
    """Read one split of one task from a GLUE data directory.

    Files are read as UTF-8 TSV with quote characters kept literally (as the
    original's csv reader with quotechar=None). For MNLI, "dev" and "test" mean
    the matched sets. The diagnostic (AX) set is read as split "diagnostic" of
    task "mnli", whose classifier predicts it.
    """
    task = _canonical_task(task)
    split = _canonical_split(task, split)
    path = _split_path(data_dir, task, split)
    layout = _layout_for(task, split)
    examples = [
        _make_example(row, lineno, layout, task, split, path)
        for lineno, row in _iter_rows(path, layout)
    ]
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def _canonical_split(task: str, split: str) -> str:
    """Validate a split name for a task (MNLI has matched/mismatched files)."""
    if task == "mnli":
        split = _MNLI_SPLIT_ALIASES.get(split, split)
        valid = _MNLI_SPLITS
    else:
        valid = _PLAIN_SPLITS
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for task {task}; valid: {', '.join(valid)}")
    return split


def _split_path(data_dir, task: str, split: str) -> Path:
    """Path of a split's file; a plain join (the original concatenated strings)."""
    if split == "diagnostic":
        return Path(data_dir) / "diagnostic" / "diagnostic.tsv"
    return Path(data_dir) / TASKS[task].folder / f"{split}.tsv"


def _layout_for(task: str, split: str) -> _Layout:
    if split == "diagnostic":
        return _DIAGNOSTIC_LAYOUT
    if split.startswith("test"):
        return _TEST_LAYOUTS[task]
    if task == "mnli":
        return _MNLI_TRAIN if split == "train" else _MNLI_DEV
    return _LABELLED_LAYOUTS[task]


def _read_text(path: Path) -> str:
    """Whole file as text; DataError naming the path (and line) when unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x})") from None


def _iter_rows(path: Path, layout: _Layout):
    """Yield (1-based line number, fields) for every data row of a TSV file.

    One physical line is one row: with QUOTE_NONE a field can never span lines.
    Blank lines are skipped; the header (the first line) too when the layout has one.
    """
    text = _read_text(path)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    for index, row in enumerate(_guard_csv(reader, path)):
        if (index == 0 and layout.header) or not row:
            continue
        if layout.drop_other_widths and len(row) != layout.n_fields:
            continue  # the original drops malformed QQP rows without a word
        if len(row) != layout.n_fields:
            # Too many fields is an error too: with a tab inside a sentence the label
            # column would silently come from the wrong field (the original took it).
            raise DataError(f"{path}:{index + 1}: expected {layout.n_fields} fields, "
                            f"got {len(row)}")
        yield index + 1, row


def _guard_csv(reader, path: Path):
    """Re-raise csv errors (e.g. an over-long field) as DataError with the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: {err}") from None
        yield row


def _make_example(row, lineno, layout, task, split, path) -> InputExample:
    """Build an InputExample from one row, checking its label."""
    if layout.guid_column is None:
        guid = f"{split}-{lineno - 1}"  # the original's row index (header counted)
    elif split.startswith("test") or split == "diagnostic":
        guid = row[layout.guid_column]  # the index GLUE expects in submissions
    else:
        guid = f"{split}-{row[layout.guid_column]}"
    text_b = row[layout.text_b] if layout.text_b is not None else None
    label = None
    if layout.label is not None:
        label = row[layout.label]
        _check_label(task, label, path, lineno)
    return InputExample(guid=guid, text_a=row[layout.text_a], text_b=text_b, label=label)


def _check_label(task: str, label: str, path: Path, lineno: int) -> None:
    spec = TASKS[task]
    if spec.is_regression:
        if _parse_score(label) is None:
            raise DataError(f"{path}:{lineno}: bad STS-B score {label!r} (expected a number in [0, 5])")
    elif label not in spec.labels:
        raise DataError(f"{path}:{lineno}: unknown label {label!r} for {task} "
                        f"(expected one of {', '.join(spec.labels)})")


def _parse_score(text: str) -> float | None:
    """An STS-B similarity score in [0, 5], or None if the text is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 5.0 else None


# ---------------------------------------------------------------------------
# Features (spec 3.4) and batching
# ---------------------------------------------------------------------------

@dataclass
class InputFeatures:
    """Token ids of one example, unpadded (the attention mask is implied by length)."""

    input_ids: list[int]
    segment_ids: list[int]
    label_id: int | float | None


def truncate_seq_pair(tokens_a, tokens_b, max_length) -> None:
    """Truncate a pair in place: pop from the longer sequence (b on ties) until it fits.

    Popping one token at a time from the longer side keeps as much of the shorter
    sequence as possible, where each token carries more information.
    """
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def convert_examples_to_features(examples, task: str, tokenizer, max_seq_length: int) -> list[InputFeatures]:
    """Tokenize examples into [CLS] a [SEP] (b [SEP]) id sequences with their labels."""
    task = _canonical_task(task)
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
    return [_example_to_features(ex, task, tokenizer, max_seq_length) for ex in examples]


def _example_to_features(example, task, tokenizer, max_seq_length) -> InputFeatures:
    tokens_a = tokenizer.tokenize(example.text_a)
    tokens_b = tokenizer.tokenize(example.text_b) if example.text_b else []
    if tokens_b:
        truncate_seq_pair(tokens_a, tokens_b, max_seq_length - 3)
    else:
        tokens_a = tokens_a[: max_seq_length - 2]
    tokens = ["[CLS]", *tokens_a, "[SEP]"]
    segment_ids = [0] * len(tokens)
    if tokens_b:  # checked after truncation, as the original
        tokens += [*tokens_b, "[SEP]"]
        segment_ids += [1] * (len(tokens_b) + 1)
    input_ids = list(tokenizer.convert_tokens_to_ids(tokens))
    return InputFeatures(input_ids, segment_ids, _label_id(task, example.label))


def _label_id(task: str, label: str | None) -> int | float | None:
    """Class index, or for STS-B the score scaled to [0, 1]; None for test examples."""
    if label is None:
        return None
    spec = TASKS[task]
    if spec.is_regression:
        return float(label) / 5.0
    if label not in spec.labels:
        raise ValueError(f"unknown label {label!r} for {task} (expected one of {', '.join(spec.labels)})")
    return spec.labels.index(label)


def collate_features(features: list[InputFeatures], pad_to: int | None = None,
                     regression: bool = False) -> dict[str, torch.Tensor]:
    """Stack features into padded tensors (pad id 0, mask 1 for real tokens).

    Pads to the longest sequence in the batch, or to ``pad_to`` (the original's
    fixed max_seq_length). "label_ids" is present only when every feature has a label.
    """
    if not features:
        raise ValueError("cannot collate an empty batch")
    longest = max(len(f.input_ids) for f in features)
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest sequence ({longest})")
    input_ids = np.zeros((len(features), width), dtype=np.int64)
    segment_ids = np.zeros_like(input_ids)
    input_mask = np.zeros_like(input_ids)
    for row, feature in enumerate(features):
        n = len(feature.input_ids)
        input_ids[row, :n] = feature.input_ids
        segment_ids[row, :n] = feature.segment_ids
        input_mask[row, :n] = 1
    batch = {
        "input_ids": torch.from_numpy(input_ids),
        "segment_ids": torch.from_numpy(segment_ids),
        "input_mask": torch.from_numpy(input_mask),
    }
    labels = _collate_labels(features, regression)
    if labels is not None:
        batch["label_ids"] = labels
    return batch


def _collate_labels(features, regression: bool) -> torch.Tensor | None:
    labels = [f.label_id for f in features]
    missing = sum(label is None for label in labels)
    if missing == len(labels):
        return None
    if missing:
        raise ValueError("batch mixes labelled and unlabelled examples")
    dtype = torch.float32 if regression else torch.int64
    return torch.tensor(labels, dtype=dtype)


def length_grouped_order(lengths: list[int], batch_size: int,
                         rng: np.random.Generator | None) -> list[int]:
    """An order of example indexes that puts similar lengths in the same batch.

    Consecutive runs of batch_size indexes in the result are the batches.
    Without rng (inference): all indexes sorted by length, longest first (stable,
    so deterministic; the longest batch comes first so memory problems show at once).
    With rng (training): shuffle, cut into mega-batches of 50 batches, sort each
    by length, cut into batches, then shuffle the batches, so batches stay random
    but need little padding. The one partial batch (if any) stays last, because
    anywhere else it would shift the boundaries of every batch after it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lengths = np.asarray(lengths)
    if rng is None:
        return [int(i) for i in np.argsort(-lengths, kind="stable")]
    order = rng.permutation(len(lengths))
    mega = batch_size * 50  # a multiple of batch_size: only the last chunk leaves a partial batch
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    partial = [batches.pop()] if len(batches[-1]) < batch_size else []
    shuffled = [batches[b] for b in rng.permutation(len(batches))] + partial
    return [int(i) for batch in shuffled for i in batch]


# ---------------------------------------------------------------------------
# Task sampling (spec 3.7)
# ---------------------------------------------------------------------------

SAMPLING_METHODS = ("prop", "sqrt", "anneal", "uniform", "rr")


def _sampling_alpha(method: str, epoch: int, num_epochs: int) -> float:
    """Exponent of the training-set size for a sampling method at an epoch."""
    if method == "prop":
        return 1.0
    if method == "sqrt":
        return 0.5
    if method in ("uniform", "rr"):
        return 0.0
    if method == "anneal":
        if num_epochs < 1 or not 0 <= epoch < num_epochs:
            raise ValueError(f"anneal needs 0 <= epoch < num_epochs, got epoch {epoch} of {num_epochs}")
        if num_epochs == 1:
            return 1.0  # the original divided by zero here
        return 1.0 - 0.8 * epoch / (num_epochs - 1)
    raise ValueError(f"unknown sampling method {method!r}; valid: {', '.join(SAMPLING_METHODS)}")


def sampling_probabilities(sizes: list[float], method: str, epoch: int = 0,
                           num_epochs: int = 1) -> np.ndarray:
    """Task probabilities p_i proportional to N_i ** alpha (spec 3.7).

    Computed with Python floats in the original's order of operations, so the
    probabilities (and hence the draws) are bit-identical to the original's.
    """
    alpha = _sampling_alpha(method, epoch, num_epochs)
    if len(sizes) == 0 or any(not (float(n) > 0) for n in sizes):
        raise ValueError(f"task sizes must be a non-empty list of positive numbers, got {list(sizes)}")
    weights = [float(n) ** alpha for n in sizes]
    total = sum(weights)
    return np.array([w / total for w in weights], dtype=np.float64)


class TaskSampler:
    """Draws one task index per optimizer step.

    It owns a numpy RandomState seeded with `seed`, so its draws for
    'prop'/'sqrt'/'anneal'/'uniform' equal the original's
    ``np.random.seed(seed); np.random.choice(n, p=probs)`` sequence, without
    touching numpy's global state. 'rr' cycles 0, 1, ..., n-1, 0, ... across epochs.
    """

    def __init__(self, sizes, method, num_epochs, seed):
        self.sizes = list(sizes)
        self.method = method
        self.num_epochs = int(num_epochs)
        self.epoch = 0
        self._rng = np.random.RandomState(seed)
        self._rr_next = 0
        self.probs = sampling_probabilities(self.sizes, method, 0, self.num_epochs)

    def start_epoch(self, epoch: int) -> np.ndarray:
        """Recompute the probabilities for an epoch (only 'anneal' changes) and return them."""
        self.probs = sampling_probabilities(self.sizes, self.method, epoch, self.num_epochs)
        self.epoch = epoch
        return self.probs.copy()

    def next_task(self) -> int:
        """Index of the task to train on at the next optimizer step."""
        if self.method == "rr":
            task = self._rr_next
            self._rr_next = (task + 1) % len(self.sizes)
            return task
        return int(self._rng.choice(len(self.probs), p=self.probs))

    def state_dict(self) -> dict:
        """Everything needed to continue the exact sequence; plain Python types only,
        so it survives torch.load(weights_only=True) and JSON."""
        state = self._rng.get_state(legacy=False)
        return {
            "method": self.method,
            "sizes": [float(n) for n in self.sizes],
            "num_epochs": self.num_epochs,
            "epoch": self.epoch,
            "rr_next": self._rr_next,
            "rng": {
                "key": [int(k) for k in state["state"]["key"]],
                "pos": int(state["state"]["pos"]),
                "has_gauss": int(state["has_gauss"]),
                "gauss": float(state["gauss"]),
            },
        }

    def load_state_dict(self, state) -> None:
        """Restore a state saved by state_dict() of a sampler with the same setup."""
        saved = (state["method"], [float(n) for n in state["sizes"]], int(state["num_epochs"]))
        mine = (self.method, [float(n) for n in self.sizes], self.num_epochs)
        if saved != mine:
            raise ValueError(f"sampler state is for (method, sizes, epochs) {saved}, not {mine}")
        rng = state["rng"]
        self._rng.set_state({
            "bit_generator": "MT19937",
            "state": {"key": np.array(rng["key"], dtype=np.uint32), "pos": rng["pos"]},
            "has_gauss": rng["has_gauss"],
            "gauss": rng["gauss"],
        })
        self._rr_next = int(state["rr_next"])
        self.start_epoch(int(state["epoch"]))


# ---------------------------------------------------------------------------
# Metrics (corpus level; spec 3.10 for the original's per-batch variant)
# ---------------------------------------------------------------------------

def _as_vector(values, what: str) -> np.ndarray:
    """A 1-D array; a [N, 1] column (a regression head's output) is flattened."""
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{what} must be one value per example, got shape {array.shape}")
    return array


def _check_pair(preds, labels) -> tuple[np.ndarray, np.ndarray]:
    preds, labels = _as_vector(preds, "preds"), _as_vector(labels, "labels")
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if len(preds) == 0:
        raise ValueError("no predictions to score")
    return preds, labels


def _mcc(preds, labels) -> float:
    from sklearn.metrics import matthews_corrcoef
    with warnings.catch_warnings():  # single-class input: sklearn warns, returns 0
        warnings.simplefilter("ignore")
        return float(matthews_corrcoef(labels, preds))


def _f1(preds, labels) -> float:
    from sklearn.metrics import f1_score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(f1_score(labels, preds, pos_label=1, zero_division=0))


def _correlation(kind: str, x, y) -> float:
    """Pearson or Spearman r; 0.0 where undefined (constant input or < 2 points)."""
    from scipy import stats
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    func = stats.pearsonr if kind == "pearson" else stats.spearmanr
    return float(func(x, y)[0])


def compute_metrics(task: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Corpus-level GLUE metrics of one task on a 0-1 scale.

    preds are class ids, or for STS-B floats on the model's 0-1 scale (clipped
    to [0, 1] first, as the original); labels likewise.
    """
    task = _canonical_task(task)
    preds, labels = _check_pair(preds, labels)
    if TASKS[task].is_regression:
        clipped = np.clip(preds.astype(np.float64), 0.0, 1.0)
        pearson = _correlation("pearson", clipped, labels)
        spearman = _correlation("spearman", clipped, labels)
        return {"pearson": pearson, "spearman": spearman, "corr": (pearson + spearman) / 2}
    if task == "cola":
        return {"mcc": _mcc(preds, labels)}
    acc = float(np.mean(preds == labels))
    if task in ("mrpc", "qqp"):
        f1 = _f1(preds, labels)
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    return {"acc": acc}


def task_score(task: str, metrics: dict) -> float:
    """The task's single GLUE number (0-1 scale): the mean of its official metrics."""
    names = TASKS[_canonical_task(task)].metric_names
    missing = [name for name in names if name not in metrics]
    if missing:
        raise ValueError(f"metrics for {task} lack {', '.join(missing)}")
    return float(sum(metrics[name] for name in names) / len(names))


def glue_average(scores: dict[str, float]) -> float:
    """Unweighted mean of task scores; "mnli" and "mnli-mm" count as separate entries."""
    if not scores:
        raise ValueError("no task scores to average")
    return float(sum(scores.values()) / len(scores))


def original_batch_metric(task, preds, labels, eval_batch_size=8) -> float:
    """The original's dev metric (spec 3.10), for faithful replication.

    CoLA: per-batch MCC weighted by batch size; STS-B: per-batch Pearson of the
    clipped predictions weighted likewise (NaN stays NaN, as in the original);
    other tasks: accuracy.
    """
    task = _canonical_task(task)
    preds, labels = _check_pair(preds, labels)
    if eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be at least 1, got {eval_batch_size}")
    if task not in ("cola", "sts"):
        return float(np.mean(preds == labels))
    total = 0.0
    for start in range(0, len(preds), eval_batch_size):
        p = preds[start:start + eval_batch_size]
        y = labels[start:start + eval_batch_size]
        value = _mcc(p, y) if task == "cola" else _raw_pearson(np.clip(p, 0.0, 1.0), y)
        total += value * len(p)
    return total / len(preds)


def _raw_pearson(x, y) -> float:
    """scipy's Pearson r without the guard: NaN for constant or one-point batches."""
    from scipy import stats
    if len(x) < 2:
        return float("nan")  # 2019 scipy gave NaN here; today's raises
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.pearsonr(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))[0])


# ---------------------------------------------------------------------------
# GLUE submission files
# ---------------------------------------------------------------------------

SUBMISSION_FILE_NAMES: dict[str, str] = {
    "cola": "CoLA.tsv", "sst": "SST-2.tsv", "mrpc": "MRPC.tsv", "sts": "STS-B.tsv",
    "qqp": "QQP.tsv", "mnli": "MNLI-m.tsv", "mnli-mm": "MNLI-mm.tsv", "qnli": "QNLI.tsv",
    "rte": "RTE.tsv", "wnli": "WNLI.tsv", "ax": "AX.tsv",
}

# Which test split of each task feeds which submission file (keys of SUBMISSION_FILE_NAMES).
TEST_SPLITS: dict[str, tuple[tuple[str, str], ...]] = {
    **{name: (("test", name),) for name in TASKS if name != "mnli"},
    "mnli": (("test_matched", "mnli"), ("test_mismatched", "mnli-mm"), ("diagnostic", "ax")),
}

# Submission keys that are predicted by another task's classifier.
_SUBMISSION_TASK = {"mnli-m": "mnli", "mnli-mm": "mnli", "ax": "mnli"}


def prediction_label(task, pred) -> str:
    """A prediction as GLUE expects it: the label string, or the STS-B score on 0-5."""
    task = _SUBMISSION_TASK.get(task, task)
    spec = TASKS[_canonical_task(task)]
    if spec.is_regression:
        return f"{min(max(float(pred) * 5.0, 0.0), 5.0):.3f}"
    index = int(pred)
    if index != pred or not 0 <= index < len(spec.labels):
        raise ValueError(f"prediction {pred!r} is not a class id of {spec.name} (0..{len(spec.labels) - 1})")
    return spec.labels[index]


def write_submission(path, task: str, guids: list[str], preds) -> None:
    """Write a GLUE server TSV ("index<TAB>prediction") atomically, in input order."""
    if len(guids) != len(preds):
        raise ValueError(f"{len(guids)} guids for {len(preds)} predictions")
    lines = ["index\tprediction"]
    for guid, pred in zip(guids, preds):
        if any(ch in str(guid) for ch in "\t\r\n"):
            raise ValueError(f"guid {guid!r} contains a tab or newline")
        lines.append(f"{guid}\t{prediction_label(task, pred)}")
    _write_atomically(Path(path), "\n".join(lines) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`, so a
    crash never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# Synthetic GLUE data (for demos and tests; GLUE cannot be downloaded here)
# ---------------------------------------------------------------------------
# Every word below is a whole token of bert-base-uncased's vocabulary.

_PEOPLE = ["man", "woman", "boy", "girl", "child", "teacher", "doctor", "farmer", "student",
           "king", "queen", "soldier", "singer", "writer", "driver", "nurse", "player", "artist"]
_ANIMALS = ["dog", "cat", "horse", "bird", "cow", "rabbit", "lion", "bear", "wolf", "fox"]
_THINGS = ["book", "car", "ball", "letter", "box", "boat", "chair", "table", "picture",
           "song", "cake", "door", "bag", "key", "phone", "map", "bike", "coat"]
_PLACES = ["park", "house", "city", "school", "river", "garden", "market", "church", "station",
           "forest", "village", "hospital", "library", "kitchen", "beach", "hotel"]
_TIMES = ["monday", "tuesday", "friday", "sunday", "saturday", "wednesday"]
_ADJECTIVES = ["big", "small", "old", "young", "happy", "quiet", "tall", "angry", "kind",
               "busy", "tired", "brave", "rich", "strong", "famous", "lonely"]
# (past tense, base form, past participle)
_VERBS = [("saw", "see", "seen"), ("liked", "like", "liked"), ("helped", "help", "helped"),
          ("found", "find", "found"), ("called", "call", "called"), ("watched", "watch", "watched"),
          ("followed", "follow", "followed"), ("visited", "visit", "visited"),
          ("heard", "hear", "heard"), ("met", "meet", "met"), ("chased", "chase", "chased"),
          ("painted", "paint", "painted"), ("carried", "carry", "carried"),
          ("pushed", "push", "pushed"), ("loved", "love", "loved")]
_SYNONYMS = {"big": "large", "small": "little", "city": "town", "house": "home",
             "happy": "glad", "angry": "mad", "famous": "known", "quiet": "silent",
             "saw": "noticed", "liked": "enjoyed", "found": "discovered", "helped": "assisted"}
_POSITIVE = ["good", "great", "excellent", "wonderful", "beautiful", "brilliant", "charming",
             "delightful", "enjoyable", "funny", "lovely", "perfect", "fine", "fresh", "smart",
             "clever", "warm", "moving", "solid", "sweet"]
_NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "horrible", "weak", "ugly",
             "stupid", "painful", "messy", "silly", "flat", "empty", "slow", "cheap", "lazy",
             "tired", "dead"]
_ASPECTS = ["movie", "film", "story", "plot", "acting", "cast", "director", "music", "ending",
            "script", "dialogue", "humor", "pace", "camera", "performance", "hero"]
_INTENSIFIERS = ["very", "really", "quite", "so", "pretty", "truly"]
_ACTIONS_ING = ["playing", "cutting", "riding", "eating", "holding", "reading", "drawing",
                "cleaning", "carrying", "watching", "opening", "throwing", "washing", "cooking",
                "pushing", "selling"]
# (base, -ing) skills for QQP questions
_SKILLS = [("cook", "cooking"), ("swim", "swimming"), ("drive", "driving"), ("paint", "painting"),
           ("sing", "singing"), ("dance", "dancing"), ("write", "writing"), ("draw", "drawing"),
           ("run", "running"), ("fish", "fishing"), ("play chess", "playing chess"),
           ("speak french", "speaking french"), ("play guitar", "playing guitar"),
           ("code", "coding"), ("ride a horse", "riding a horse"), ("teach", "teaching")]
_QQP_INTENTS = {
    "learn": ["how can i learn {b}?", "what is the best way to learn {b}?", "how do i get better at {i}?",
              "how should i start learning {i}?"],
    "hard": ["why is {i} so hard?", "what makes {i} difficult?", "is {i} hard to learn?"],
    "cost": ["how much does it cost to learn {i}?", "is learning {i} expensive?",
             "what is the cost of {i} lessons?"],
    "late": ["am i too old to learn {i}?", "is it too late to start {i}?",
             "can i learn {i} at the age of forty?"],
}
_COLA_SOURCES = ["gj04", "bc01", "ad03", "c-05", "w_80", "r-67", "l-93", "m_02", "ks08", "b_73"]
_MNLI_GENRES_MATCHED = ["fiction", "government", "slate", "telephone", "travel"]
_MNLI_GENRES_MISMATCHED = ["facetoface", "letters", "nineeleven", "oup", "verbatim"]

_LABEL_NOISE = 0.1

# Base sizes (scale 1.0): unequal across tasks, so proportional sampling matters.
_DEMO_TRAIN_SIZES = {"cola": 320, "mrpc": 160, "mnli": 640, "rte": 140, "sts": 240,
                     "sst": 360, "qqp": 560, "qnli": 400, "wnli": 160}
_DEMO_DEV_SIZE = 100
_DEMO_TEST_SIZE = 60


def _scaled(n: int, scale: float, floor: int) -> int:
    return max(floor, int(round(n * scale)))


def _noisy(rng: random.Random, label: str, labels) -> str:
    """Replace the label by another one with probability _LABEL_NOISE."""
    if rng.random() < _LABEL_NOISE:
        return rng.choice([other for other in labels if other != label])
    return label


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _subject(rng: random.Random) -> str:
    return rng.choice(_PEOPLE)


def _object(rng: random.Random) -> str:
    return rng.choice(_ANIMALS + _THINGS)


def _other(rng: random.Random, pool, *avoid) -> str:
    """A word from pool different from every word in avoid."""
    return rng.choice([word for word in pool if word not in avoid])


# --- SST-2: sentiment from word polarity, negation and "but" --------------------

def _sst_clause(rng: random.Random, aspect: str) -> tuple[str, int]:
    """A clause about one aspect and its polarity (+1/-1) after negation."""
    polarity = rng.choice((1, -1))
    word = rng.choice(_POSITIVE if polarity > 0 else _NEGATIVE)
    negated = rng.random() < 0.25
    if rng.random() < 0.05:
        aspect = f'" {aspect} "'  # literal quotes, as in real SST-2 text
    words = ["the", aspect, "is"]
    if negated:
        words.append("not")
    if rng.random() < 0.4:
        words.append(rng.choice(_INTENSIFIERS))
    words.append(word)
    return " ".join(words), -polarity if negated else polarity


def _sst_sentence(rng: random.Random) -> tuple[str, str]:
    """Sentence and label: the sign of the summed polarities; on a tie, the clause after "but"."""
    if rng.random() < 0.2:
        polarity = rng.choice((1, -1))
        word = rng.choice(_POSITIVE if polarity > 0 else _NEGATIVE)
        text = f"it 's a {word} {rng.choice(_ASPECTS)}"
        return text + " ", "1" if polarity > 0 else "0"
    clauses = [_sst_clause(rng, aspect) for aspect in rng.sample(_ASPECTS, rng.choice((1, 2, 3)))]
    score = sum(p for _, p in clauses)
    if len(clauses) == 2:
        text = f"{clauses[0][0]} , but {clauses[1][0]}"
        score = score or clauses[1][1]
    else:
        text = " , and ".join(c for c, _ in clauses)
    return text + " ", "1" if score > 0 else "0"


def _demo_sst(rng, n_train, n_dev, n_test):
    header = ["sentence", "label"]
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []
        for _ in range(n):
            text, label = _sst_sentence(rng)
            rows.append([text, _noisy(rng, label, _BINARY)])
        files[split] = [header] + rows
    files["test"] = [["index", "sentence"]] + [[str(i), _sst_sentence(rng)[0]] for i in range(n_test)]
    return files


# --- CoLA: acceptability from word order ------------------------------------

def _cola_sentence(rng: random.Random) -> tuple[str, str]:
    """A simple transitive sentence; unacceptable ones break one word-order rule."""
    adj, subj, obj, place = rng.choice(_ADJECTIVES), _subject(rng), _object(rng), rng.choice(_PLACES)
    verb = rng.choice(_VERBS)[0]
    good = ["the", adj, subj, verb, "the", obj, "in", "the", place]
    if rng.random() < 0.1:
        good = ["the", subj, "said", '"', "the", obj, "is", adj, '"']
        bad = ["the", subj, "said", '"', "the", obj, adj, "is", '"']
    else:
        bad = rng.choice([
            [verb, "the", adj, subj, "the", obj, "in", "the", place],   # verb first
            ["the", subj, adj, verb, "the", obj, "in", "the", place],   # adjective after noun
            ["the", adj, subj, verb, obj, "the", "in", "the", place],   # determiner after noun
            ["the", adj, subj, "the", obj, verb, "in", "the", place],   # object before verb
            ["the", adj, subj, verb, "the", obj, "the", "in", place],   # determiner before preposition
        ])
    acceptable = rng.random() < 0.7
    words = good if acceptable else bad
    return _cap(" ".join(words)) + ".", "1" if acceptable else "0"


def _demo_cola(rng, n_train, n_dev, n_test):
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = []  # no header: CoLA's train and dev files have none
        for _ in range(n):
            text, label = _cola_sentence(rng)
            label = _noisy(rng, label, _BINARY)
            rows.append([rng.choice(_COLA_SOURCES), label, "" if label == "1" else "*", text])
        files[split] = rows
    files["test"] = [["index", "sentence"]] + [[str(i), _cola_sentence(rng)[0]] for i in range(n_test)]
    return files


# --- Shared event sentences for MRPC, MNLI, RTE, QNLI, diagnostic ----------

@dataclass
class _Event:
    """Who did what to what, where and when."""

    adj: str
    subject: str
    verb: tuple
    obj: str
    place: str
    time: str

    @classmethod
    def random(cls, rng: random.Random) -> "_Event":
        return cls(rng.choice(_ADJECTIVES), _subject(rng), rng.choice(_VERBS), _object(rng),
                   rng.choice(_PLACES), rng.choice(_TIMES))

    def sentence(self, with_time=True) -> str:
        text = f"the {self.adj} {self.subject} {self.verb[0]} the {self.obj} in the {self.place}"
        return text + (f" on {self.time}" if with_time else "")


def _synonymize(rng: random.Random, text: str) -> str:
    """Swap some words for synonyms, so paraphrases do not share every word."""
    return " ".join(_SYNONYMS[w] if w in _SYNONYMS and rng.random() < 0.5 else w
                    for w in text.split(" "))


# --- MRPC: paraphrase = same event in other words -------------------------

def _mrpc_pair(rng: random.Random) -> tuple[str, str, str]:
    event = _Event.random(rng)
    first = _cap(event.sentence()) + " ."
    if rng.random() < 0.68:  # MRPC is about two thirds paraphrases
        label, changed = "1", event
    else:
        label, changed = "0", _change_one_slot(rng, event)
    if rng.random() < 0.5:
        second = (f"On {changed.time} , the {changed.adj} {changed.subject} {changed.verb[0]} "
                  f"the {changed.obj} in the {changed.place} .")
    else:
        second = (f"The {changed.obj} was {changed.verb[2]} by the {changed.adj} {changed.subject} "
                  f"in the {changed.place} on {changed.time} .")
    if rng.random() < 0.1:
        speaker = _other(rng, _PEOPLE, event.subject)
        first = f'The {speaker} said " {first[0].lower() + first[1:-2]} " .'
    return label, first, _synonymize(rng, second)


def _change_one_slot(rng: random.Random, event: _Event) -> _Event:
    """The same event with one key detail changed (a near-paraphrase distractor)."""
    slot = rng.choice(("subject", "obj", "place", "time", "swap"))
    changed = _Event(**vars(event))
    if slot == "subject":
        changed.subject = _other(rng, _PEOPLE, event.subject)
    elif slot == "obj":
        changed.obj = _other(rng, _ANIMALS + _THINGS, event.obj)
    elif slot == "place":
        changed.place = _other(rng, _PLACES, event.place)
    elif slot == "time":
        changed.time = _other(rng, _TIMES, event.time)
    else:
        changed.subject, changed.obj = _other(rng, _PEOPLE, event.subject), event.subject
    return changed


def _demo_mrpc(rng, n_train, n_dev, n_test):
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [header]
        for _ in range(n):
            label, first, second = _mrpc_pair(rng)
            ids = [str(rng.randrange(10000, 3500000)) for _ in range(2)]
            rows.append([_noisy(rng, label, _BINARY), *ids, first, second])
        files[split] = rows
    test = [["index", "#1 ID", "#2 ID", "#1 String", "#2 String"]]
    for i in range(n_test):
        _, first, second = _mrpc_pair(rng)
        test.append([str(i), str(rng.randrange(10000, 3500000)), str(rng.randrange(10000, 3500000)),
                     first, second])
    files["test"] = test
    return files


# --- NLI: entailment, contradiction or neutral hypotheses about an event ---

def _nli_hypothesis(rng: random.Random, event: _Event, label: str, with_time: bool) -> str:
    """A hypothesis with the given relation to the premise event.sentence(with_time)."""
    past, base, participle = event.verb
    s, o = event.subject, event.obj
    if label == "entailment":
        options = [f"the {s} {past} the {o}", f"the {s} was in the {event.place}",
                   f"the {o} was {participle} by the {s}",
                   f"someone {past} the {o}" + (f" on {event.time}" if with_time else "")]
    elif label == "contradiction":
        options = [f"the {s} did not {base} the {o}", f"the {s} never went to the {event.place}",
                   f"the {s} {past} the {o} in the {_other(rng, _PLACES, event.place)}",
                   f"nobody {past} the {o}"]
    else:
        options = [f"the {s} {past} the {o} because it was {rng.choice(_ADJECTIVES)}",
                   f"the {s} {past} the {o} twice", f"the {s} is a {rng.choice(_PEOPLE)}",
                   f"the {s} also {past} the {_other(rng, _ANIMALS + _THINGS, o)}"]
    return _cap(rng.choice(options)) + " ."


def _nli_pair(rng: random.Random, labels=_NLI3) -> tuple[str, str, str]:
    """(premise, hypothesis, 3-way label) about one random event."""
    event = _Event.random(rng)
    label = rng.choice(labels)
    with_time = rng.random() < 0.7
    premise = _cap(event.sentence(with_time)) + " ."
    return premise, _nli_hypothesis(rng, event, label, with_time), label


def _parses(sentence: str) -> tuple[str, str]:
    """Flat stand-ins for MNLI's binary parse and full parse columns."""
    words = sentence.split(" ")
    return "( " + " ".join(words) + " )", "(ROOT (S " + " ".join(f"(X {w})" for w in words) + "))"


def _mnli_rows(rng, n, genres, n_annotators, labelled=True):
    rows = []
    for index in range(n):
        premise, hypothesis, label = _nli_pair(rng)
        prompt = rng.randrange(1000, 150000)
        pair = f"{prompt}{label[0]}" if labelled else str(prompt)  # real pair ids end in e/n/c
        (premise_binary, premise_parse), (hypothesis_binary, hypothesis_parse) = \
            _parses(premise), _parses(hypothesis)
        row = [str(index), str(prompt), pair, rng.choice(genres),
               premise_binary, hypothesis_binary, premise_parse, hypothesis_parse, premise, hypothesis]
        if labelled:
            gold = _noisy(rng, label, _NLI3)
            annotators = [gold] * n_annotators
            if n_annotators > 1:
                annotators[-1] = rng.choice(_NLI3)  # one annotator sometimes disagrees
            row += [*annotators, gold]
        rows.append(row)
    return rows


def _demo_mnli(rng, n_train, n_dev, n_test):
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse",
            "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    train_header = base + ["label1", "gold_label"]
    dev_header = base + [f"label{k}" for k in range(1, 6)] + ["gold_label"]
    return {
        "train": [train_header] + _mnli_rows(rng, n_train, _MNLI_GENRES_MATCHED, 1),
        "dev_matched": [dev_header] + _mnli_rows(rng, n_dev, _MNLI_GENRES_MATCHED, 5),
        "dev_mismatched": [dev_header] + _mnli_rows(rng, n_dev, _MNLI_GENRES_MISMATCHED, 5),
        "test_matched": [base] + _mnli_rows(rng, n_test, _MNLI_GENRES_MATCHED, 0, labelled=False),
        "test_mismatched": [base] + _mnli_rows(rng, n_test, _MNLI_GENRES_MISMATCHED, 0, labelled=False),
    }


def _demo_diagnostic(rng, n):
    rows = [["index", "sentence1", "sentence2"]]
    for index in range(n):
        premise, hypothesis, _ = _nli_pair(rng)
        rows.append([str(index), premise, hypothesis])
    return rows


def _rte_pair(rng: random.Random) -> tuple[str, str, str]:
    """A longer premise (event plus an unrelated distractor sentence) and a binary label."""
    premise, hypothesis, label = _nli_pair(rng)
    distractor = _cap(_Event.random(rng).sentence()) + " ."
    if rng.random() < 0.5:
        premise = f"{premise} {distractor}"
    else:
        premise = f"{distractor} {premise}"
    return premise, hypothesis, "entailment" if label == "entailment" else "not_entailment"


def _demo_pairs(rng, make_pair, header, test_header, labels, n_train, n_dev, n_test):
    """train/dev/test files for tasks laid out as index, text a, text b[, label]."""
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [header]
        for index in range(n):
            first, second, label = make_pair(rng)
            rows.append([str(index), first, second, _noisy(rng, label, labels)])
        files[split] = rows
    files["test"] = [test_header] + [[str(i), *make_pair(rng)[:2]] for i in range(n_test)]
    return files


def _demo_rte(rng, n_train, n_dev, n_test):
    return _demo_pairs(rng, _rte_pair, ["index", "sentence1", "sentence2", "label"],
                       ["index", "sentence1", "sentence2"], _NLI2, n_train, n_dev, n_test)


# --- QNLI: does the sentence answer the question? ---------------------------

def _qnli_pair(rng: random.Random) -> tuple[str, str, str]:
    event = _Event.random(rng)
    past, base, _ = event.verb
    kind = rng.choice(("where", "when", "who", "what"))
    question = {
        "where": f"where did the {event.subject} {base} the {event.obj}?",
        "when": f"when did the {event.subject} {base} the {event.obj}?",
        "who": f"who {past} the {event.obj} in the {event.place}?",
        "what": f"what did the {event.subject} {base} in the {event.place}?",
    }[kind]
    answers = rng.random() < 0.5
    told = event if answers else _unanswering_event(rng, event, kind)
    with_time = kind == "when" or rng.random() < 0.5
    sentence = told.sentence(with_time=with_time)
    if not answers and kind == "where":
        sentence = f"the {told.adj} {told.subject} {told.verb[0]} the {told.obj} on {told.time}"
    return _cap(question), _cap(sentence) + " .", "entailment" if answers else "not_entailment"


def _unanswering_event(rng: random.Random, event: _Event, kind: str) -> _Event:
    """A similar event that does not answer the question (other actor or thing)."""
    changed = _Event(**vars(event))
    if kind in ("where", "when", "what"):
        changed.subject = _other(rng, _PEOPLE, event.subject)
    if kind in ("who", "where", "when") and rng.random() < 0.5:
        changed.obj = _other(rng, _ANIMALS + _THINGS, event.obj)
    if kind == "who":
        changed.place = _other(rng, _PLACES, event.place)
    return changed


def _demo_qnli(rng, n_train, n_dev, n_test):
    return _demo_pairs(rng, _qnli_pair, ["index", "question", "sentence", "label"],
                       ["index", "question", "sentence"], _NLI2, n_train, n_dev, n_test)


# --- WNLI: pronoun resolution ---------------------------------------------

# (sentence, degree word, adjective pointing at {a}, adjective pointing at {b}, pool of a, pool of b)
_WNLI_TEMPLATES = [
    ("the {a} could not lift the {b} because it was too {adj} .", "too", "weak", "heavy", _ANIMALS, _THINGS),
    ("the {a} did not fit into the {b} because it was too {adj} .", "too", "big", "small", _THINGS, _THINGS),
    ("the {a} thanked the {b} because he was so {adj} .", "so", "grateful", "helpful", _PEOPLE, _PEOPLE),
    ("the {a} was afraid of the {b} because it was so {adj} .", "so", "small", "dangerous", _ANIMALS, _ANIMALS),
]


def _wnli_pair(rng: random.Random) -> tuple[str, str, str]:
    """A Winograd-style sentence; the hypothesis names a candidate for the pronoun."""
    template, degree, a_adj, b_adj, a_pool, b_pool = rng.choice(_WNLI_TEMPLATES)
    a = rng.choice(a_pool)
    b = _other(rng, b_pool, a)
    adj = rng.choice((a_adj, b_adj))
    referent = a if adj == a_adj else b
    candidate = rng.choice((a, b))
    hypothesis = f"The {candidate} was {degree} {adj} ."
    return _cap(template.format(a=a, b=b, adj=adj)), hypothesis, "1" if candidate == referent else "0"


def _demo_wnli(rng, n_train, n_dev, n_test):
    return _demo_pairs(rng, _wnli_pair, ["index", "sentence1", "sentence2", "label"],
                       ["index", "sentence1", "sentence2"], _BINARY, n_train, n_dev, n_test)


# --- QQP: duplicate questions ---------------------------------------------

def _qqp_pair(rng: random.Random) -> tuple[str, str, str]:
    intent = rng.choice(list(_QQP_INTENTS))
    skill = rng.choice(_SKILLS)
    first_template = rng.choice(_QQP_INTENTS[intent])
    if rng.random() < 0.37:  # about a third of QQP pairs are duplicates
        label, other_intent, other_skill = "1", intent, skill
    elif rng.random() < 0.5:
        label, other_intent, other_skill = "0", _other(rng, list(_QQP_INTENTS), intent), skill
    else:
        label, other_intent, other_skill = "0", intent, _other(rng, _SKILLS, skill)
    second_template = _other(rng, _QQP_INTENTS[other_intent], first_template) \
        if other_intent == intent else rng.choice(_QQP_INTENTS[other_intent])
    first = first_template.format(b=skill[0], i=skill[1])
    second = second_template.format(b=other_skill[0], i=other_skill[1])
    return _cap(first), _cap(second), label


def _demo_qqp(rng, n_train, n_dev, n_test):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        rows = [header]
        for index in range(n):
            first, second, label = _qqp_pair(rng)
            rows.append([str(index), str(2 * index + 1), str(2 * index + 2), first, second,
                         _noisy(rng, label, _BINARY)])
        if split == "train":
            _add_broken_qqp_rows(rng, rows)
        files[split] = rows
    files["test"] = [["id", "question1", "question2"]] + [[str(i), *_qqp_pair(rng)[:2]] for i in range(n_test)]
    return files


def _add_broken_qqp_rows(rng: random.Random, rows: list) -> None:
    """Real QQP has rows with missing fields: one without question2, and one
    whose question1 contains a newline (so it spans two lines of 4 and 3 fields)."""
    n = len(rows) - 1
    first, _, label = _qqp_pair(rng)
    rows.insert(1 + n // 3, [str(n), str(2 * n + 1), str(2 * n + 2), first, label])
    first, second, label = _qqp_pair(rng)
    head, _, tail = first.partition(" ")
    rows.insert(1 + 2 * n // 3, [str(n + 1), str(2 * n + 3), str(2 * n + 4), head + "\n" + tail, second, label])


# --- STS-B: similarity = fraction of shared details ----------------------

def _sts_pair(rng: random.Random) -> tuple[str, str, float]:
    """Two captions; the score is 5 x the fraction of the five slots they share, plus noise."""
    slots = [rng.choice(_ADJECTIVES), _subject(rng), rng.choice(_ACTIONS_ING), _object(rng), rng.choice(_PLACES)]
    pools = [_ADJECTIVES, _PEOPLE, _ACTIONS_ING, _ANIMALS + _THINGS, _PLACES]
    keep = rng.random()
    other = [word if rng.random() < keep else _other(rng, pool, word) for word, pool in zip(slots, pools)]
    shared = sum(a == b for a, b in zip(slots, other)) / len(slots)
    score = min(5.0, max(0.0, 5.0 * shared + rng.gauss(0.0, 0.5)))

    def caption(words):
        adj, who, action, what, where = words
        return f"A {adj} {who} is {action} a {what} in the {where} ."
    return caption(slots), caption(other), score


def _demo_sts(rng, n_train, n_dev, n_test):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
              "sentence1", "sentence2"]
    files = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        rows = [header + ([] if split == "test" else ["score"])]
        for index in range(n):
            first, second, score = _sts_pair(rng)
            row = [str(index), rng.choice(("main-captions", "main-news", "main-forums")),
                   "MSRvid", "2012test", f"{index + 1:04d}", "none", "none", first, second]
            rows.append(row if split == "test" else row + [f"{score:.3f}"])
        files[split] = rows
    return files


_DEMO_MAKERS = {"cola": _demo_cola, "mrpc": _demo_mrpc, "mnli": _demo_mnli, "rte": _demo_rte,
                "sts": _demo_sts, "sst": _demo_sst, "qqp": _demo_qqp, "qnli": _demo_qnli,
                "wnli": _demo_wnli}


def _write_tsv(path: Path, rows: list) -> None:
    _write_atomically(path, "".join("\t".join(row) + "\n" for row in rows))


def write_demo_glue(out_dir, seed: int = 0, scale: float = 1.0) -> dict[str, int]:
    """Write a small synthetic GLUE tree in the exact real layouts; return {task: n_train}.

    Deterministic in `seed` (each task has its own random stream, so tasks do not
    depend on each other). Every task is learnable from its text, with about 10%
    label noise so that no task is trivially solved. Train sizes are unequal
    (MNLI and QQP largest, RTE and MRPC smallest) and scale with `scale`, as do
    the dev (100) and test (60) sizes.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    out_dir = Path(out_dir)
    n_train = {task: _scaled(size, scale, 20) for task, size in _DEMO_TRAIN_SIZES.items()}
    n_dev, n_test = _scaled(_DEMO_DEV_SIZE, scale, 10), _scaled(_DEMO_TEST_SIZE, scale, 5)
    for task, make in _DEMO_MAKERS.items():
        # A string seed is hashed deterministically (unaffected by PYTHONHASHSEED).
        rng = random.Random(f"bert-pals-demo-glue/{seed}/{task}")
        for split, rows in make(rng, n_train[task], n_dev, n_test).items():
            _write_tsv(out_dir / TASKS[task].folder / f"{split}.tsv", rows)
    rng = random.Random(f"bert-pals-demo-glue/{seed}/diagnostic")
    _write_tsv(out_dir / "diagnostic" / "diagnostic.tsv", _demo_diagnostic(rng, n_test))
    return n_train
