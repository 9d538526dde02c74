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
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from checkpointing import atomic_write_text
from errors import DataError

logger = logging.getLogger(__name__)

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
        return [task_for_id(task_id)]
    names = [_canonical_task(part) for part in _split_task_list(tasks_arg)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"task listed more than once: {', '.join(duplicates)}")
    return names


def task_for_id(task_id: int | str | None) -> str:
    """What ``--task_id`` names, in every script alike: a task name or alias, or an
    integer, the position in the 'all' order (cola 0, mrpc 1, mnli 2, rte 3, sts 4,
    sst 5, qqp 6, qnli 7: the original's --tasks single)."""
    if task_id is None:
        raise ValueError("--tasks single needs a task id")
    text = str(task_id).strip()  # the original's --task_id arrives as a string
    if not re.fullmatch(r"[+-]?\d+", text):
        try:
            return _canonical_task(text)
        except ValueError:
            raise ValueError(f"task id must be a task name or an integer (its position in the 'all' "
                             f"order), got {task_id!r}; valid tasks: {', '.join(TASKS)}") from None
    index = int(text)
    if not 0 <= index < len(ORIGINAL_TASK_ORDER):
        raise ValueError(f"task id {task_id} out of range 0..{len(ORIGINAL_TASK_ORDER) - 1} (the 'all' order: "
                         f"{', '.join(f'{i} {name}' for i, name in enumerate(ORIGINAL_TASK_ORDER))})")
    return ORIGINAL_TASK_ORDER[index]


def task_id_argument(text: str) -> int | str:
    """argparse ``type`` of ``--task_id``: an integer stays an integer (as args.json has
    it), anything else is kept as a task name and checked by ``task_for_id``."""
    text = text.strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else text


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
    """One example as read from a GLUE file; label is None for test sets.

    extract_features uses it for its input lines too: guid is then the 0-based line
    index (its output's ``linex_index``) and there is no label.
    """

    guid: str | int
    text_a: str
    text_b: str | None = None
    label: str | None = None

    # The original extract_features' name of the line index (its InputExample(unique_id,
    # text_a, text_b) took the same positions).
    @property
    def unique_id(self) -> str | int:
        return self.guid

    @unique_id.setter
    def unique_id(self, value: str | int) -> None:
        self.guid = value


@dataclass(frozen=True)
class _Layout:
    """Where the fields of one GLUE file live (column indexes; -1 = last column)."""

    n_fields: int              # fields a row must have (the real file's column count)
    text_a: int
    text_b: int | None = None
    label: int | None = None   # None for unlabelled files
    guid_column: int | None = None  # None: guid "<split>-<line index>" as the original
    header: tuple[str, ...] = ()  # GLUE's header row (its column names); () for a file without one
    drop_other_widths: bool = False  # QQP: drop rows with != n_fields (the original; counted in a warning)


def _columns(text: str) -> tuple[str, ...]:
    return tuple(text.split(" "))


_MNLI_COLUMNS = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse sentence1_parse "
                 "sentence2_parse sentence1 sentence2")
_STS_COLUMNS = "index genre filename year old_index source1 source2 sentence1 sentence2"
_MRPC_COLUMNS = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")

# Train and dev files: the original's processors (spec 3.3); WNLI as GLUE ships it.
# CoLA's train and dev files are the only ones without a header row.
_LABELLED_LAYOUTS = {
    "cola": _Layout(4, text_a=3, label=1),
    "sst": _Layout(2, text_a=0, label=1, header=_columns("sentence label")),
    "mrpc": _Layout(5, text_a=3, text_b=4, label=0, header=_MRPC_COLUMNS),
    "sts": _Layout(10, text_a=7, text_b=8, label=-1, header=_columns(_STS_COLUMNS + " score")),
    "qqp": _Layout(6, text_a=3, text_b=4, label=-1, drop_other_widths=True,
                   header=_columns("id qid1 qid2 question1 question2 is_duplicate")),
    "qnli": _Layout(4, text_a=1, text_b=2, label=-1, header=_columns("index question sentence label")),
    "rte": _Layout(4, text_a=1, text_b=2, label=-1, header=_columns("index sentence1 sentence2 label")),
    "wnli": _Layout(4, text_a=1, text_b=2, label=-1, header=_columns("index sentence1 sentence2 label")),
}
# MNLI: train has 12 columns, dev 16 (five annotator labels); guid from column 0.
_MNLI_TRAIN = _Layout(12, text_a=8, text_b=9, label=-1, guid_column=0,
                      header=_columns(_MNLI_COLUMNS + " label1 gold_label"))
_MNLI_DEV = _Layout(16, text_a=8, text_b=9, label=-1, guid_column=0,
                    header=_columns(_MNLI_COLUMNS + " label1 label2 label3 label4 label5 gold_label"))

# Test files: a header, the index first (it becomes the guid), no label.
_TEST_LAYOUTS = {
    "cola": _Layout(2, text_a=1, guid_column=0, header=_columns("index sentence")),
    "sst": _Layout(2, text_a=1, guid_column=0, header=_columns("index sentence")),
    "mrpc": _Layout(5, text_a=3, text_b=4, guid_column=0, header=("index",) + _MRPC_COLUMNS[1:]),
    "sts": _Layout(9, text_a=7, text_b=8, guid_column=0, header=_columns(_STS_COLUMNS)),
    "qqp": _Layout(3, text_a=1, text_b=2, guid_column=0, header=_columns("id question1 question2")),
    "mnli": _Layout(10, text_a=8, text_b=9, guid_column=0, header=_columns(_MNLI_COLUMNS)),
    "qnli": _Layout(3, text_a=1, text_b=2, guid_column=0, header=_columns("index question sentence")),
    "rte": _Layout(3, text_a=1, text_b=2, guid_column=0, header=_columns("index sentence1 sentence2")),
    "wnli": _Layout(3, text_a=1, text_b=2, guid_column=0, header=_columns("index sentence1 sentence2")),
}
_DIAGNOSTIC_LAYOUT = _Layout(3, text_a=1, text_b=2, guid_column=0, header=_columns("index sentence1 sentence2"))

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
    Blank lines are skipped. The first row of a layout with a header must be that
    header (its column names, any case), else DataError: a file written without it
    would silently lose its first example.
    """
    text = _read_text(path)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    header_pending = bool(layout.header)
    dropped: list[int] = []
    for index, row in enumerate(_guard_csv(reader, path)):
        if not row:
            continue
        if header_pending:
            _check_header(row, index + 1, layout, path)
            header_pending = False
            continue
        if layout.drop_other_widths and len(row) != layout.n_fields:
            dropped.append(index + 1)  # the original drops malformed QQP rows (real QQP has some)
            continue
        if len(row) != layout.n_fields:
            # Too many fields is an error too: with a tab inside a sentence the label
            # column would silently come from the wrong field (the original took it).
            raise DataError(f"{path}:{index + 1}: expected {layout.n_fields} fields, "
                            f"got {len(row)}")
        yield index + 1, row
    if dropped:
        logger.warning("%s: skipped %d row(s) without exactly %d fields, as the original did (line%s %s)",
                       path, len(dropped), layout.n_fields, "s" if len(dropped) > 1 else "",
                       ", ".join(map(str, dropped[:5])) + (", ..." if len(dropped) > 5 else ""))


def _check_header(row: list[str], lineno: int, layout: _Layout, path: Path) -> None:
    """The header row must name GLUE's columns (compared without case and surrounding spaces)."""
    if [field.strip().lower() for field in row] == [name.lower() for name in layout.header]:
        return
    found = "<TAB>".join(row)
    found = found if len(found) <= 80 else found[:77] + "..."
    raise DataError(f"{path}:{lineno}: expected the header row {'<TAB>'.join(layout.header)!r}, found "
                    f"{found!r}: this file's first line must be GLUE's header (a first example there "
                    f"would be lost); write the header line above the data")


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
        hint = ""
        if task == "cola" and lineno == 1:
            hint = "; CoLA's train and dev files have no header row"
        raise DataError(f"{path}:{lineno}: unknown label {label!r} for {task} "
                        f"(expected one of {', '.join(spec.labels)}){hint}")


def _parse_score(text: str) -> float | None:
    """An STS-B similarity score in [0, 5], or None if the text is not one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 5.0 else None


# ---------------------------------------------------------------------------
# Free text, one example per line (extract_features.py, predict.py)
# ---------------------------------------------------------------------------

# The original's pair separator: " ||| " with a space on each side.
PAIR_PATTERN = re.compile(r"^(.*) \|\|\| (.*)$")


def iter_text_lines(path) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) of a UTF-8 file, without line endings.

    Lines end at \\n, \\r\\n or \\r, as in Python's text mode (the original read the file
    in text mode). Blank (or whitespace-only) lines at the end of the file are not
    yielded: most editors end a file that way. Blank lines between other lines are
    yielded, for the caller to judge. A line that is not UTF-8 raises DataError naming
    the file and the line. The file is read lazily, so inputs larger than memory work.
    """
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: input file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read input file: {err.strerror}") from None
    with handle:
        line_number = 0
        blank: list[tuple[int, str]] = []  # blank lines seen, yielded once a non-blank line follows
        for raw in handle:
            line_number += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{line_number}: not valid UTF-8 ({err.reason} at byte "
                                 f"{err.start} of the line)") from None
            text = text[:-1] if text.endswith("\n") else text
            text = text[:-1] if text.endswith("\r") else text
            # A lone \r is a line break in text mode too.
            for piece in text.split("\r"):
                if not piece.strip():
                    blank.append((line_number, piece))
                    continue
                yield from blank
                blank.clear()
                yield line_number, piece


def split_text_pair(line: str) -> tuple[str, str | None]:
    """The input rule of extract_features.py and predict.py: (text_a, text_b or None).

    ``A ||| B`` (the original's separator, a space on each side) or ``A<TAB>B`` is a
    sentence pair; any other line is one sentence. Surrounding whitespace is stripped.
    A line with more than one tab (and no ``|||``) is refused with ValueError: which
    tab separates the pair would be a guess.
    """
    line = line.strip()
    match = PAIR_PATTERN.match(line)
    if match is not None:
        return match.group(1), match.group(2)
    if "\t" not in line:
        return line, None
    fields = line.split("\t")
    if len(fields) > 2:
        raise ValueError(f"{len(fields)} tab-separated fields; a pair is 'A<TAB>B' or 'A ||| B'")
    return fields[0].strip(), fields[1].strip()


# ---------------------------------------------------------------------------
# Features (spec 3.4) and batching
# ---------------------------------------------------------------------------

@dataclass
class InputFeatures:
    """Token ids of one example, unpadded (the attention mask is implied by length).

    tokens and guid are kept only on request (``example_to_features(keep_tokens=True)``,
    for extract_features, which writes them); training's features leave them None.
    """

    input_ids: list[int]
    segment_ids: list[int]
    label_id: int | float | None = None
    tokens: list[str] | None = None
    guid: str | int | None = None
    truncated: bool = False  # the example had more tokens than max_seq_length allows

    # The original extract_features' names: unique_id (the line index) and
    # input_type_ids (the segment ids); input_mask is 1 for every token (features are
    # not padded here).
    @property
    def unique_id(self) -> str | int | None:
        return self.guid

    @unique_id.setter
    def unique_id(self, value: str | int | None) -> None:
        self.guid = value

    @property
    def input_type_ids(self) -> list[int]:
        return self.segment_ids

    @input_type_ids.setter
    def input_type_ids(self, value: list[int]) -> None:
        self.segment_ids = value

    @property
    def input_mask(self) -> list[int]:
        return [1] * len(self.input_ids)


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
    return [example_to_features(ex, tokenizer, max_seq_length, task) for ex in examples]


def example_to_features(example: InputExample, tokenizer, max_seq_length: int, task: str | None = None,
                        keep_tokens: bool = False) -> InputFeatures:
    """One example as [CLS] a [SEP] (segment 0), then b [SEP] (segment 1) for a pair.

    A pair is truncated longest-first (truncate_seq_pair), a single sentence from the end.
    With ``task`` (a registry key) the label becomes its id, else label_id is None;
    ``keep_tokens`` also keeps the word pieces and the example's guid; ``truncated`` says
    whether tokens were dropped.
    max_seq_length must be at least 3.
    """
    tokens_a = tokenizer.tokenize(example.text_a)
    tokens_b = tokenizer.tokenize(example.text_b) if example.text_b else []
    truncated = len(tokens_a) + len(tokens_b) > max_seq_length - (3 if tokens_b else 2)
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
    label_id = _label_id(task, example.label) if task is not None else None
    if keep_tokens:
        return InputFeatures(input_ids, segment_ids, label_id, tokens=tokens, guid=example.guid, truncated=truncated)
    return InputFeatures(input_ids, segment_ids, label_id, truncated=truncated)


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


MEGA_BATCHES = 50  # batches per mega-batch of the training order (transformers' group_by_length)


def length_grouped_order(lengths: list[int], batch_size: int,
                         rng: np.random.Generator | None) -> list[int]:
    """An order of example indexes that puts similar lengths in the same batch.

    Consecutive runs of batch_size indexes in the result are the batches.
    Without rng (inference): all indexes sorted by length, longest first (stable,
    so deterministic; the longest batch comes first so memory problems show at once).
    With rng (training), as transformers' ``group_by_length``: shuffle, cut into
    mega-batches of 50 batches (fewer for small data, so that there are at least
    four), sort each by length, cut into batches, then shuffle the batches, so
    batches stay random but need little padding. The one partial batch (if any)
    stays last, because anywhere else it would shift the boundaries of every batch
    after it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lengths = np.asarray(lengths)
    if rng is None:
        return [int(i) for i in np.argsort(-lengths, kind="stable")]
    order = rng.permutation(len(lengths))
    # A multiple of batch_size: only the last chunk leaves a partial batch.
    mega = batch_size * max(1, min(MEGA_BATCHES, len(lengths) // (4 * batch_size)))
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if not batches:
        return []
    partial = [batches.pop()] if len(batches[-1]) < batch_size else []
    shuffled = [batches[b] for b in rng.permutation(len(batches))] + partial
    return [int(i) for batch in shuffled for i in batch]


def length_grouped_pass(lengths: list[int], batch_size: int, rng: np.random.Generator,
                        head: int = 0) -> np.ndarray:
    """One training pass over all examples, length-grouped, for an endless stream of
    passes cut into batches of batch_size.

    When the stream's batch boundaries do not fall on the pass boundary, the pass's
    first ``head`` examples complete a batch begun at the end of the previous pass:
    they are drawn at random, and the rest is ``length_grouped_order`` (its partial
    batch, if any, last: the start of the batch the next pass completes). So every
    batch that lies inside the pass is length-grouped, and at most one batch per
    pass, the one across the boundary, mixes lengths.
    """
    if not 0 <= head < batch_size:
        raise ValueError(f"head must be in [0, {batch_size}), got {head}")
    order = rng.permutation(len(lengths))
    first, rest = order[:head], order[head:]
    grouped = length_grouped_order(np.asarray(lengths)[rest], batch_size, rng)
    return np.concatenate([first, rest[np.asarray(grouped, dtype=np.int64)]])


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


def regression_score(pred) -> float:
    """An STS-B prediction on GLUE's 0-5 scale (the model predicts score / 5), clipped."""
    return min(max(float(pred) * 5.0, 0.0), 5.0)


def prediction_label(task, pred) -> str:
    """A prediction as GLUE expects it: the label string, or the STS-B score on 0-5."""
    task = _SUBMISSION_TASK.get(task, task)
    spec = TASKS[_canonical_task(task)]
    if spec.is_regression:
        return f"{regression_score(pred):.3f}"
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
    atomic_write_text(path, "\n".join(lines) + "\n")
