"""Predictions on new text from a trained model: ``Predictor`` (what predict.py runs).

    from inference import Predictor

    predictor = Predictor.from_run("runs/pals")       # an output folder of run_multi_task.py
    predictor("sst", ["a gripping film", "a dull film"])
    # [{'task': 'sst', 'label': '1', 'probabilities': {'0': 0.02, '1': 0.98}}, {...}]
    predictor("mnli", [("A man plays a guitar.", "Someone makes music.")])
    predictor("all", ["one sentence"])                # every task of the run, one result each
    predictor.predict([("sst", "a film", None), ("rte", "A.", "B.")])   # any mix, streamed

A result is plain Python: the task, the label as GLUE writes it (``entailment``, ``1``;
for STS-B the score as ``3.210``), the probability of every label (classification) or
the ``score`` on the 0-5 scale (STS-B), and ``"truncated": True`` when the input had more
tokens than ``max_seq_length`` and was cut (as in training: glue's feature builder).

How it runs: requests are taken in windows of 64 batches; within a window they are sorted
by length and cut into batches padded to their longest member. A batch may mix tasks:
it is one forward pass with per-row task ids (the shared BERT once over all rows, each
task's adapters and head on its own rows; see modeling.per_task). Results come back in
request order, so inputs larger than memory stream through.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

import checkpointing
import glue
import reports
import tokenization
from errors import DataError, UsageError, VocabError
from modeling import BertForMultiTask

logger = logging.getLogger("predict")

DEFAULT_MAX_SEQ_LENGTH = 128  # for a run folder without args.json, and adapter files
WINDOW_BATCHES = 64  # requests are sorted by length within windows of this many batches
INPUT_FORMATS = ("auto", "text", "jsonl")
JSON_KEYS = ("text_a", "text_b", "task")


class Request(NamedTuple):
    """One prediction to make: a task (a name the model was trained on) and a text or pair."""

    task: str
    text_a: str
    text_b: str | None = None


class Predictor:
    """A trained multi-task model, its tokenizer and its task names, ready for new text.

    Build one with ``from_run`` (a run folder) or ``from_adapters`` (a shared BERT and
    per-task adapter files), or directly from a model. The model is put in eval mode on
    ``device`` (CUDA when available, else the CPU); ``bf16`` runs under bfloat16 autocast.
    """

    def __init__(self, model: BertForMultiTask, task_names: Sequence[str], tokenizer: tokenization.FullTokenizer,
                 *, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, batch_size: int = 32, device: str | torch.device | None = None,
                 bf16: bool = False):
        config = model.config
        if len(task_names) != len(model.num_labels):
            raise UsageError(f"{len(task_names)} task names for a model with {len(model.num_labels)} tasks")
        for name, num_labels in zip(task_names, model.num_labels):
            if name not in glue.TASKS:
                raise UsageError(f"the model's task {name!r} is not a GLUE task ({', '.join(glue.TASKS)}): "
                                 f"its labels are unknown")
            if glue.TASKS[name].num_labels != num_labels:
                raise UsageError(f"the model's head for {name} has {num_labels} outputs, "
                                 f"{name} has {glue.TASKS[name].num_labels}")
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if not 3 <= max_seq_length <= config.max_position_embeddings:
            raise UsageError(f"max_seq_length must be between 3 and max_position_embeddings "
                             f"({config.max_position_embeddings}), got {max_seq_length}")
        tokenization.check_vocab_fits(tokenizer.vocab, config.vocab_size)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.task_names = list(task_names)
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.bf16 = bf16

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def from_run(cls, run_dir: str | Path, *, do_lower_case: bool | None = None, **options) -> Predictor:
        """The best model of a run folder (best_model.pth, config.json, vocab.txt, tasks.json).

        Lower-casing and ``max_seq_length`` default to the run's own (its args.json); a
        folder without one lower-cases unless the vocabulary looks cased, and truncates
        at 128. ``options``: ``max_seq_length``, ``batch_size``, ``device``, ``bf16``.
        The log says which epoch and step the model comes from, and warns when the run
        has not finished.
        """
        folder = checkpointing.load_model_folder(run_dir)
        trained_with = checkpointing.read_run_arguments(run_dir) or {}
        do_lower_case = _lower_casing(do_lower_case, trained_with, Path(run_dir) / checkpointing.ARGS_FILE)
        if options.get("max_seq_length") is None:
            options["max_seq_length"] = int(trained_with.get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH))
        tokenizer = make_tokenizer(folder.vocab_file, do_lower_case)
        tokenization.check_vocab_fits(tokenizer.vocab, folder.model.config.vocab_size, folder.vocab_file,
                                      folder.config_file)
        _warn_about_vocabulary(tokenizer, folder.model.config.vocab_size, folder.vocab_file)
        level, line = describe_run_model(run_dir)
        logger.log(level, line)
        return cls(folder.model, folder.task_names, tokenizer, **options)

    @classmethod
    def from_adapters(cls, shared_bert: str | Path, adapter_files: Sequence[str | Path], vocab_file: str | Path,
                      *, do_lower_case: bool | None = None, **options) -> Predictor:
        """A shared BERT and any set of task adapter files (as run_multi_task.py's
        ``--init_checkpoint`` with ``--adapter_checkpoints``); task ids follow the files.

        Lower-casing and ``max_seq_length`` default to what the adapter files record of
        their run (files of earlier versions: as the vocabulary suggests, 128). Adapters
        trained beside another shared BERT, or with another vocabulary than
        ``vocab_file``, are refused.
        """
        recorded = checkpointing.adapter_trained_with(adapter_files) if adapter_files else {}
        do_lower_case = _lower_casing(do_lower_case, recorded, adapter_files[0] if adapter_files else None)
        if options.get("max_seq_length") is None:
            options["max_seq_length"] = int(recorded.get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH))
        model, task_names = checkpointing.build_model_from_adapters(shared_bert, list(adapter_files))
        tokenizer = make_tokenizer(vocab_file, do_lower_case)
        tokenization.check_vocab_fits(tokenizer.vocab, model.config.vocab_size, vocab_file,
                                      f"the config of {adapter_files[0]}")
        check_adapter_vocabulary(tokenizer.vocab, vocab_file, recorded, adapter_files)
        _warn_about_vocabulary(tokenizer, model.config.vocab_size, vocab_file)
        return cls(model, task_names, tokenizer, **options)

    # ---- tasks ----------------------------------------------------------------------

    def resolve_tasks(self, spec: str | Sequence[str]) -> list[str]:
        """"all" (every task of the model), one task, a comma list, or a list of names;
        aliases such as "sst-2" are accepted. UsageError for an unknown task or one the
        model was not trained on."""
        if isinstance(spec, str):
            if spec.strip().lower() == "all":
                return list(self.task_names)
            spec = spec.split(",")
        names = []
        for part in spec:
            try:
                [name] = glue.resolve_task_names(str(part))
            except ValueError as err:
                raise UsageError(f"task {str(part).strip()!r}: {err}") from None
            if name not in self.task_names:
                raise UsageError(f"task {name!r}: the model was trained on {', '.join(self.task_names)} only")
            if name not in names:
                names.append(name)
        if not names:
            raise UsageError("no task given")
        return names

    # ---- prediction -----------------------------------------------------------------

    def __call__(self, task: str | Sequence[str], inputs: Iterable[str | Sequence[str] | dict]) -> list[dict]:
        """Predict ``task`` (a name, a comma list, "all" or a list) for every input: a text,
        a (text_a, text_b) pair or a dict with "text_a" (and "text_b"). One result per input
        and task, in input order (tasks in the order given)."""
        if isinstance(inputs, (str, bytes)):
            raise UsageError("give a list of inputs, e.g. predictor('sst', ['a gripping film'])")
        tasks = self.resolve_tasks(task)
        requests = [Request(name, *_texts_of(item, index)) for index, item in enumerate(inputs) for name in tasks]
        return list(self.predict(requests))

    def predict(self, requests: Iterable[Request | tuple], progress=None) -> Iterator[dict]:
        """Results for ``requests`` ((task, text_a, text_b) each; any mix of tasks), in
        request order, computed a window at a time. ``progress``: anything with
        ``update(n)`` (a ``cli.Progress``), told about every batch done."""
        window: list[tuple[int, glue.InputFeatures]] = []
        features_of: dict[tuple[str, str | None], glue.InputFeatures] = {}  # one tokenisation per text
        for number, request in enumerate(requests):
            try:
                task, text_a, text_b = Request(*request)
            except TypeError:
                raise UsageError(f"request {number}: expected (task, text_a, text_b), got {request!r:.80}") from None
            task_id = self._task_id(task)
            if not isinstance(text_a, str) or not (text_b is None or isinstance(text_b, str)):
                raise UsageError(f"request {number}: texts must be strings, got {request!r}")
            key = (text_a, text_b)
            if key not in features_of:
                example = glue.InputExample(number, text_a, text_b)
                features_of[key] = glue.example_to_features(example, self.tokenizer, self.max_seq_length)
            window.append((task_id, features_of[key]))
            if len(window) == self.batch_size * WINDOW_BATCHES:
                yield from self._run_window(window, progress)
                window, features_of = [], {}
        if window:
            yield from self._run_window(window, progress)

    def _task_id(self, task: str) -> int:
        if task in self.task_names:
            return self.task_names.index(task)
        names = self.resolve_tasks(task) if isinstance(task, str) else []  # an alias, or a UsageError
        if len(names) != 1:
            raise UsageError(f"a request names one task, got {task!r}")
        return self.task_names.index(names[0])

    def _run_window(self, window: list[tuple[int, glue.InputFeatures]], progress) -> list[dict]:
        """Results for one window, in its order: batches of similar length, rows of a batch
        grouped by task (so each task's rows are one slice), one forward pass per batch."""
        results: list[dict | None] = [None] * len(window)
        order = glue.length_grouped_order([len(f.input_ids) for _, f in window], self.batch_size, None)
        for start in range(0, len(order), self.batch_size):
            rows = sorted(order[start:start + self.batch_size], key=lambda k: window[k][0])  # stable: by task
            task_ids = [window[k][0] for k in rows]
            logits = self._forward([window[k][1] for k in rows], task_ids)  # [b, max n_labels]
            for row, k in enumerate(rows):
                results[k] = self._result(task_ids[row], logits[row], window[k][1].truncated)
            if progress is not None:
                progress.update(len(rows))
        return results

    def _forward(self, features: list[glue.InputFeatures], task_ids: list[int]) -> np.ndarray:
        batch = glue.collate_features(features)
        mixed = len(set(task_ids)) > 1
        task = torch.tensor(task_ids, device=self.device) if mixed else task_ids[0]
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(batch["input_ids"].to(self.device), batch["segment_ids"].to(self.device),
                                batch["input_mask"].to(self.device), task)
        return logits.float().cpu().numpy()

    def _result(self, task_id: int, logits: np.ndarray, truncated: bool) -> dict[str, Any]:
        """A row's logits (its task's first n columns) as plain Python."""
        name = self.task_names[task_id]
        spec = glue.TASKS[name]
        if spec.is_regression:
            result = {"task": name, "label": glue.prediction_label(name, logits[0]),
                      "score": glue.regression_score(logits[0])}
        else:
            values = logits[: spec.num_labels].astype(np.float64)
            probabilities = np.exp(values - values.max())
            probabilities /= probabilities.sum()
            label = spec.labels[int(np.argmax(values))]  # from the logits, as the evaluation
            result = {"task": name, "label": label,
                      "probabilities": {lab: float(p) for lab, p in zip(spec.labels, probabilities)}}
        if truncated:
            result["truncated"] = True
        return result


def _lower_casing(given: bool | None, recorded: dict, source) -> bool | None:
    """Lower-casing: as given, else as the run recorded it (None: unknown). Given against
    the record, it is used, with one warning."""
    if "do_lower_case" not in recorded:
        return given
    trained = bool(recorded["do_lower_case"])
    if given is not None and given != trained:
        logger.warning("the model was trained with lower-casing %s (%s); predicting with it %s as asked",
                       "on" if trained else "off", source, "on" if given else "off")
        return given
    return trained


def _warn_about_vocabulary(tokenizer: tokenization.FullTokenizer, vocab_size: int, vocab_file) -> None:
    """What training warns about too: another size than the model's, casing that
    disagrees with lower-casing."""
    lower_case = tokenizer.basic_tokenizer.do_lower_case
    for problem in tokenization.vocabulary_warnings(tokenizer.vocab, vocab_size, lower_case):
        logger.warning("%s %s (lower-casing %s)", vocab_file, problem, "on" if lower_case else "off")


def check_adapter_vocabulary(vocab: dict, vocab_file, recorded: dict, adapter_files: Sequence) -> None:
    """Refuse a vocabulary other than the one the adapters were trained with: its ids
    would mean other words, and predictions would change without a word. The record is
    the adapter files' metadata; for files of earlier versions, the run folder's own
    vocab.txt when they sit in its adapters/ folder."""
    expected, source = recorded.get("vocab_sha256"), adapter_files[0] if adapter_files else None
    if expected is None and adapter_files:
        run_vocab = Path(adapter_files[0]).resolve().parent.parent / checkpointing.VOCAB_FILE
        if run_vocab.is_file() and Path(adapter_files[0]).resolve().parent.name == checkpointing.ADAPTER_DIR:
            expected, source = tokenization.vocab_fingerprint(tokenization.load_vocab(run_vocab)), run_vocab
    if expected is None:
        return
    actual = tokenization.vocab_fingerprint(vocab)
    if actual != expected:
        raise VocabError(f"{vocab_file}: not the vocabulary the adapters were trained with (fingerprint "
                         f"{actual[:12]}, {source} records {expected[:12]}): use the vocab.txt of the run "
                         f"that wrote them")


def describe_run_model(run_dir: str | Path) -> tuple[int, str]:
    """(log level, line): which epoch and step a run folder's best model comes from and
    whether the run finished; a warning for a run that has not (stopped, or still
    training): its best model so far is not what the whole run would give."""
    run_dir = Path(run_dir)
    best = reports.read_eval_results(run_dir)
    if "epoch" in best and "global_step" in best:
        origin = f"the best model of epoch {best['epoch']} (step {best['global_step']}"
        if isinstance(best.get("glue_average"), (int, float)):
            origin += f", GLUE average {best['glue_average']:.4f}"
        origin += ")"
    else:
        origin = f"its {checkpointing.BEST_MODEL_FILE}"
    finished = checkpointing.read_finished_marker(run_dir)
    if finished is not None:
        return logging.INFO, (f"{run_dir}: {origin}; the run finished (step {finished.get('global_step', '?')}, "
                              f"{finished.get('epochs', '?')} epochs)")
    if checkpointing.training_checkpoint_path(run_dir).is_file():
        return logging.WARNING, (f"{run_dir}: the run is unfinished (no {checkpointing.TRAINING_CHECKPOINT_DIR}/"
                                 f"{checkpointing.FINISHED_FILE}: it was stopped, or is still training): predicting "
                                 f"with {origin}, its best so far; run_multi_task.py --output_dir {run_dir} --resume "
                                 f"trains the rest")
    return logging.INFO, f"{run_dir}: {origin}"


def make_tokenizer(vocab_file: str | Path, do_lower_case: bool | None) -> tokenization.FullTokenizer:
    """The WordPiece tokenizer; ``do_lower_case`` None: lower-case unless the vocabulary
    looks cased (``tokenization.vocabulary_casing``)."""
    if do_lower_case is None:
        do_lower_case = tokenization.vocabulary_casing(tokenization.load_vocab(vocab_file)) != "cased"
    return tokenization.FullTokenizer(vocab_file, do_lower_case=do_lower_case)


def _texts_of(item, index: int) -> tuple[str, str | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict) and isinstance(item.get("text_a"), str):
        return item["text_a"], item.get("text_b")
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item):
        return item[0], item[1]
    raise UsageError(f"input {index}: expected a text, a (text_a, text_b) pair or a dict with 'text_a', "
                     f"got {item!r:.80}")


# --------------------------------------------------------------------------------------
# Input files: one example per line
# --------------------------------------------------------------------------------------


def input_format_of(path: str | Path, input_format: str = "auto") -> str:
    """"text" or "jsonl"; "auto" is jsonl for a .jsonl or .ndjson file, text otherwise."""
    if input_format not in INPUT_FORMATS:
        raise UsageError(f"input format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
    if input_format != "auto":
        return input_format
    return "jsonl" if Path(path).suffix.lower() in (".jsonl", ".ndjson") else "text"


def read_requests(path: str | Path, predictor: Predictor, tasks: Sequence[str] | None,
                  input_format: str = "auto") -> Iterator[tuple[int, Request]]:
    """(line number, request) for every input line and task, in file order, read lazily.

    Text: one example per line, ``A ||| B`` or ``A<TAB>B`` a pair (glue.split_text_pair),
    predicted for each of ``tasks``. JSON lines: an object with "text_a", optional
    "text_b" and optional "task" (used instead of ``tasks``). Blank lines at the end of
    the file are ignored. An empty line between examples, a line that is not UTF-8 or
    not such an object, or one without a task is a DataError naming the file and line.
    """
    input_format = input_format_of(path, input_format)
    for line_number, line in glue.iter_text_lines(path):
        where = f"{path}:{line_number}"
        if not line.strip():
            # Not skipped: each line is one example with results of its own, so a skipped
            # line would shift the results against the input lines for anyone pairing them
            # by position (glue.iter_text_lines already leaves out blank lines at the end).
            raise DataError(f"{where}: empty line between examples: every line is one example with its own "
                            f"results, and skipping it would shift the results against the input lines; "
                            f"remove it (blank lines at the end of the file are ignored)")
        if input_format == "jsonl":
            text_a, text_b, line_tasks = _parse_json_line(line, where, predictor)
        else:
            try:
                text_a, text_b = glue.split_text_pair(line)
            except ValueError as err:
                raise DataError(f"{where}: {err}") from None
            line_tasks = None
        line_tasks = line_tasks or tasks
        if not line_tasks:
            raise DataError(f"{where}: no task for this line: give --task, or a \"task\" key in JSON lines")
        if not text_a:
            raise DataError(f"{where}: text_a is empty")
        for task in line_tasks:
            yield line_number, Request(task, text_a, text_b or None)


def _parse_json_line(line: str, where: str, predictor: Predictor) -> tuple[str, str | None, list[str] | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not a JSON object ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with \"text_a\", got {type(record).__name__}")
    unknown = [key for key in record if key not in JSON_KEYS]
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]!r} (expected {', '.join(JSON_KEYS)})")
    if "text_a" not in record:
        raise DataError(f"{where}: no \"text_a\"")
    text_a, text_b, task = record["text_a"], record.get("text_b"), record.get("task")
    if not isinstance(text_a, str) or not (text_b is None or isinstance(text_b, str)):
        raise DataError(f"{where}: \"text_a\" and \"text_b\" must be strings")
    if task is None:
        return text_a.strip(), text_b, None
    if not isinstance(task, str):
        raise DataError(f"{where}: \"task\" must be a string, got {task!r}")
    try:
        return text_a.strip(), text_b, predictor.resolve_tasks(task)
    except UsageError as err:
        raise DataError(f"{where}: {err}") from None


def truncation_warning(truncated_lines: list[int], max_seq_length: int) -> str | None:
    """The one warning about inputs cut to max_seq_length, or None."""
    if not truncated_lines:
        return None
    count = len(truncated_lines)
    return (f"{count} input line{'s' if count > 1 else ''} had more than {max_seq_length} tokens and "
            f"{'were' if count > 1 else 'was'} truncated (first: line {truncated_lines[0]}); "
            f"--max_seq_length sets the limit")

