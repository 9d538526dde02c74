"""Write BERT's hidden states for every token of every input line as JSON lines.

    python extract_features.py --input_file input.txt --output_file output.jsonl \\
        --vocab_file vocab.txt --bert_config_file bert_config.json \\
        --init_checkpoint pytorch_model.bin --layers=-1,-2,-3,-4

Input: one example per line; ``A ||| B`` or ``A<TAB>B`` is a sentence pair
(``glue.split_text_pair``). Output: one JSON object per input line, in input order,
exactly as the original wrote them::

    {"linex_index": 0, "features": [{"token": "[CLS]", "layers": [{"index": -1,
     "values": [0.123457, ...]}, ...]}, ...]}

(``linex_index`` is the original's spelling.) Only real tokens are written, values are
rounded to 6 decimals, and layer -1 is the last encoder layer (embeddings are not
available).

Fixed defects of the original: the segment ids of a pair reach the model (the original
passed none, so B tokens were encoded as segment A), and lower-casing can be turned off
(``--no_do_lower_case``). For a multi-task checkpoint with adapters, ``--task_id`` picks
the task whose adapted model's layers are written: a task name, or its index in the
'all' order, as run_multi_task.py's ``--task_id``.

Speed: examples are taken in windows (up to 64 batches, or fewer when the buffered
results would pass 256 MiB); within a window they are sorted by length and each batch
is padded only to its longest member. Lines are written in input order as soon as they
and all lines before them are done, so memory stays bounded by one window. Values are
formatted with numpy into exactly the text json.dumps gave the original. The output
appears under its name only when complete.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

import cli
import glue
import tokenization
from checkpointing import TASKS_FILE, atomic_text_output, load_pretrained_weights, read_state_dict, read_tasks_file
from errors import CheckpointError, ConfigError, DataError, UsageError
from glue import InputExample, InputFeatures, example_to_features, iter_text_lines, split_text_pair
from modeling import (
    BERT_SUBMODULES,
    BertConfig,
    BertModel,
    check_adapter_registered,
    load_adapter_module,
    task_of_key,
)

logger = logging.getLogger("extract_features")

CHUNK_BATCHES = 64  # length-grouping window: at most this many batches ...
WINDOW_VALUES = 2 ** 26  # ... and at most this many buffered float32 values (256 MiB)
DECIMALS = 6


# --------------------------------------------------------------------------------------
# Examples and features (glue.InputExample / InputFeatures; guid is the line index)
# --------------------------------------------------------------------------------------


def parse_line(line: str, unique_id: int) -> InputExample:
    """One input line as an example (the rule: ``glue.split_text_pair``); its guid is
    ``unique_id`` (written as the output's ``linex_index``). ValueError for a line with
    more than one tab."""
    text_a, text_b = split_text_pair(line)
    return InputExample(unique_id, text_a, text_b)


def read_examples(path: str) -> Iterator[InputExample]:
    """Examples in file order; the guid is the 0-based line index."""
    for unique_id, (line_number, line) in enumerate(iter_text_lines(path)):
        try:
            yield parse_line(line, unique_id)
        except ValueError as err:
            raise DataError(f"{path}:{line_number}: {err}") from None


def count_examples(path: str) -> int:
    """Number of examples; also checks every line before any model work."""
    return sum(1 for _ in read_examples(path))


def convert_example(example: InputExample, tokenizer, max_seq_length: int) -> InputFeatures:
    """glue's feature builder (truncated as the original), keeping tokens and the line index."""
    return example_to_features(example, tokenizer, max_seq_length, keep_tokens=True)


def log_features(features: InputFeatures) -> None:
    logger.info("example %d: tokens: %s | input_ids: %s | input_type_ids: %s", features.guid,
                " ".join(features.tokens), " ".join(map(str, features.input_ids)),
                " ".join(map(str, features.segment_ids)))


# --------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------


def grouping_windows(features: Iterable[InputFeatures], max_examples: int,
                     max_tokens: int) -> Iterator[list[InputFeatures]]:
    """Split the stream into consecutive windows; each is then batched by length.

    A window ends at max_examples examples or max_tokens tokens (whichever comes first),
    so the results waiting to be written in input order stay within a fixed budget.
    """
    window: list[InputFeatures] = []
    tokens = 0
    for feature in features:
        if window and (len(window) >= max_examples or tokens + len(feature.tokens) > max_tokens):
            yield window
            window, tokens = [], 0
        window.append(feature)
        tokens += len(feature.tokens)
    if window:
        yield window


def length_grouped_batches(features: Sequence[InputFeatures], batch_size: int) -> list[list[InputFeatures]]:
    """Batches of similar length (stable sort by token count) to minimise padding."""
    order = sorted(range(len(features)), key=lambda k: len(features[k].input_ids))
    return [[features[k] for k in order[start:start + batch_size]]
            for start in range(0, len(order), batch_size)]


def collate(batch: Sequence[InputFeatures]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, input_mask, input_type_ids, each [B, T] zero-padded to the longest example."""
    longest = max(len(f.input_ids) for f in batch)
    input_ids = torch.zeros(len(batch), longest, dtype=torch.long)
    input_mask = torch.zeros(len(batch), longest, dtype=torch.long)
    type_ids = torch.zeros(len(batch), longest, dtype=torch.long)
    for row, feature in enumerate(batch):
        length = len(feature.input_ids)
        input_ids[row, :length] = torch.tensor(feature.input_ids)
        input_mask[row, :length] = 1
        type_ids[row, :length] = torch.tensor(feature.segment_ids)
    return input_ids, input_mask, type_ids


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """"-1,-2" -> [-1, -2]; each index must address one of the num_layers encoder outputs."""
    indexes = []
    for part in spec.split(","):
        try:
            index = int(part)
        except ValueError:
            raise UsageError(f"--layers: {part.strip()!r} is not an integer (expected e.g. -1,-2,-3,-4)") from None
        if not -num_layers <= index < num_layers:
            raise UsageError(f"--layers: index {index} is out of range for a model with {num_layers} "
                             f"layers (use {-num_layers}..{num_layers - 1}; -1 is the last layer)")
        indexes.append(index)
    return indexes


def infer_num_tasks(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Tasks in a multi-task checkpoint (highest per-task index + 1), or None if none.

    Config files such as pals_config.json leave num_tasks at 1; the training script
    sets it from the task list, so the checkpoint is the place to read it from.
    """
    tasks = [task for task in map(task_of_key, state_dict) if task is not None]
    return max(tasks) + 1 if tasks else None


def checkpoint_task_names(checkpoint: str) -> list[str] | None:
    """The task names of a multi-task checkpoint in its task order: the tasks.json beside
    it (run_multi_task.py writes one beside best_model.pth), or None without one."""
    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    path = folder / TASKS_FILE
    return [task["name"] for task in read_tasks_file(path)] if path.is_file() else None


def resolve_task_id(task_id: int | str | None, config: BertConfig, task_names: list[str] | None = None) -> int:
    """The checkpoint's own index of the task ``--task_id`` names: a task name, or an
    index in the 'all' order (as run_multi_task.py's --task_id), looked up in the
    checkpoint's task order (``task_names``; without them the 'all' order is assumed,
    the original's --tasks all)."""
    n = config.num_tasks
    order = task_names if task_names is not None else list(glue.ORIGINAL_TASK_ORDER[:n])
    if task_id is None:
        if config.has_task_modules and n > 1:
            choices = (", ".join(task_names) if task_names is not None
                       else f"a task name or its index in the 'all' order: 0..{n - 1}")
            raise UsageError(f"the checkpoint has {n} tasks with their own adapters; choose one with "
                             f"--task_id ({choices})")
        return 0
    try:
        name = glue.task_for_id(task_id)
    except ValueError as err:
        raise UsageError(f"--task_id {task_id}: {err}") from None
    if name not in order:
        if task_names is not None:
            raise UsageError(f"--task_id {task_id} ({name}): the checkpoint's tasks are {', '.join(task_names)} "
                             f"(its {TASKS_FILE})")
        raise UsageError(f"--task_id {task_id} is out of range ({name}): the checkpoint has {n} task(s) and no "
                         f"{TASKS_FILE} beside it, so they are taken in the 'all' order: {', '.join(order)}")
    return order.index(name)


def load_model(config: BertConfig, checkpoint: str, task_id: int | str | None) -> tuple[BertModel, int]:
    """BertModel (with the config's adapters) loaded from any supported checkpoint.

    Every tensor must come from the checkpoint: an adapter config whose adapters the
    checkpoint lacks would write randomly initialised features, so it is refused.
    Returns the model in eval mode and the task index to run it with.
    """
    if config.has_task_modules or task_id is not None:
        num_tasks = infer_num_tasks(read_state_dict(checkpoint))
        if num_tasks is not None and num_tasks != config.num_tasks:
            logger.info("num_tasks = %d (from the checkpoint; the config says %d)", num_tasks, config.num_tasks)
            config = config.replace(num_tasks=num_tasks)
    task = resolve_task_id(task_id, config, checkpoint_task_names(checkpoint) if config.has_task_modules else None)
    model = BertModel(config)
    report = load_pretrained_weights(model, checkpoint, log=logger)
    if report.kept_init:
        raise CheckpointError(f"{checkpoint}: has no weights for {len(report.kept_init)} task-specific "
                              f"tensors of this config (e.g. '{report.kept_init[0]}'); use the "
                              f"checkpoint trained with this config, or a config without adapters")
    # Task-specific tensors of the encoder (not the heads, which BertModel never has).
    unused_adapters = [k for k in report.ignored if k.startswith(BERT_SUBMODULES) and task_of_key(k) is not None]
    if unused_adapters:
        logger.warning("the checkpoint has %d adapter tensors the config does not use (e.g. '%s'): "
                       "features come from the shared BERT only", len(unused_adapters), unused_adapters[0])
    return model.eval(), task


def select_device(no_cuda: bool, local_rank: int) -> torch.device:
    if no_cuda or not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank != -1:
        # Each process launched for a rank uses its own GPU; the input is not sharded.
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cuda")


def encode_batch(model: torch.nn.Module, batch: Sequence[InputFeatures], layer_indexes: Sequence[int],
                 device: torch.device, task_id: int, bf16: bool) -> np.ndarray:
    """The requested layers for a batch as float32 [L, B, T, H] (T = longest in the batch)."""
    input_ids, input_mask, type_ids = (t.to(device) for t in collate(batch))
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        all_layers, _ = model(input_ids, type_ids, input_mask, i=task_id)
    selected = torch.stack([all_layers[index] for index in layer_indexes])  # [L, B, T, H]
    return selected.float().cpu().numpy()


# --------------------------------------------------------------------------------------
# JSON formatting
#
# The original wrote json.dumps of round(x.item(), 6) for every value: Python's shortest
# repr of the rounded double. That costs ~0.5 us per value and dominated the run time,
# so values are formatted here with numpy, producing exactly the same text:
#   * x is float32, so x * 10^6 is exact in float64 (24 + 20 bits < 53); rint gives the
#     same half-even rounding as round(x, 6), and the result k / 10^6 has at most
#     4 + 6 significant digits, so its shortest repr is k's digits with the decimal point
#     placed and trailing zeros dropped ("2.0", "0.000123", "-0.0" keep Python's form).
#   * below 1e-4, repr switches to exponent form ("5e-06", "1.2e-05"), done separately.
# Values that are not finite or have more than 4 integer digits take json.dumps.
# --------------------------------------------------------------------------------------

_FAST_LIMIT = 9999.0  # |x| below this rounds to at most 4 integer digits
_FIELD = 14  # bytes per value: sign, 4 integer digits, ".", 6 decimals, ", "


@functools.cache
def _digit_tables() -> tuple[np.ndarray, np.ndarray]:
    """ASCII digits of 0..9999 (leading zeros as 0 bytes) and of 0..999999 as six decimals
    (trailing zeros as 0 bytes, the first decimal always kept). Built once, ~6 MB."""
    whole = np.arange(10 ** 4, dtype=np.int32)[:, None]
    powers = 10 ** np.arange(3, -1, -1, dtype=np.int32)[None, :]  # [1, 4]
    keep = (whole >= powers) | (powers == 1)
    whole_digits = np.where(keep, (whole // powers) % 10 + 48, 0).astype(np.uint8)  # [10^4, 4]
    frac = np.arange(10 ** 6, dtype=np.int32)[:, None]
    powers = 10 ** np.arange(5, -1, -1, dtype=np.int32)[None, :]  # [1, 6]
    keep = frac % (powers * 10) != 0  # some non-zero digit at or after this one
    keep[:, 0] = True
    frac_digits = np.where(keep, (frac // powers) % 10 + 48, 0).astype(np.uint8)  # [10^6, 6]
    return whole_digits, frac_digits


def format_value_rows(values: np.ndarray) -> list[str]:
    """float32 [R, H] -> for each row the text "v1, v2, ..." that json.dumps would write
    for [round(v, 6) for v in row] (without the brackets). |values| must be < _FAST_LIMIT."""
    whole_digits, frac_digits = _digit_tables()
    scaled = np.rint(values.astype(np.float64) * 1e6)  # exact, see above
    magnitude = np.abs(scaled).astype(np.int64)
    whole, frac = np.divmod(magnitude, 10 ** 6)
    rows, width = values.shape
    field = np.empty((rows, width, _FIELD), np.uint8)  # 0 bytes are dropped at the end
    field[..., 0] = np.signbit(scaled) * ord("-")  # rint keeps the sign of -0.0
    field[..., 1:5] = whole_digits[whole]
    field[..., 5] = ord(".")
    field[..., 6:12] = frac_digits[frac]
    field[..., 12] = ord(",")
    field[..., 13] = ord(" ")
    field[:, -1, 12:] = 0  # no separator after a row's last value
    small = np.nonzero((magnitude > 0) & (magnitude < 100))
    if small[0].size:
        field[small] = _exponent_fields(magnitude[small], field[small])
    flat = field.reshape(rows, width * _FIELD)
    keep = flat != 0
    text = flat[keep].tobytes().decode("ascii")
    result, start = [], 0
    for length in np.count_nonzero(keep, axis=1).tolist():
        result.append(text[start:start + length])
        start += length
    return result


def _exponent_fields(micro: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """Fields for 1e-6 <= |v| < 1e-4 (micro = |v| * 10^6 in 1..99): "5e-06", "1.2e-05"."""
    out = np.zeros_like(fields)
    out[:, 0] = fields[:, 0]  # sign
    out[:, 12:] = fields[:, 12:]  # separator
    two_digits = micro >= 10
    out[:, 1] = np.where(two_digits, micro // 10, micro) + 48
    second = two_digits & (micro % 10 != 0)
    out[:, 2] = np.where(second, ord("."), 0)
    out[:, 3] = np.where(second, micro % 10 + 48, 0)
    out[:, 4:7] = np.frombuffer(b"e-0", np.uint8)
    out[:, 7] = np.where(two_digits, ord("5"), ord("6"))
    return out


def format_example(feature: InputFeatures, layers: np.ndarray, layer_indexes: Sequence[int]) -> str:
    """One output line (no newline) from this example's float32 layers [L, n, H].

    The text is exactly json.dumps of the original's structure: keys and their order,
    default separators, values round(x, 6), only real tokens.
    """
    if not (np.isfinite(layers).all() and np.abs(layers).max() < _FAST_LIMIT):
        return _format_example_with_json(feature, layers, layer_indexes)
    num_layers, num_tokens, hidden = layers.shape
    rows = format_value_rows(layers.transpose(1, 0, 2).reshape(num_tokens * num_layers, hidden))  # token-major
    features = []
    for position, token in enumerate(feature.tokens):
        entries = ", ".join(f'{{"index": {index}, "values": [{rows[position * num_layers + j]}]}}'
                            for j, index in enumerate(layer_indexes))
        features.append(f'{{"token": {json.dumps(token)}, "layers": [{entries}]}}')
    return f'{{"linex_index": {feature.guid}, "features": [{", ".join(features)}]}}'


def _format_example_with_json(feature: InputFeatures, layers: np.ndarray, layer_indexes: Sequence[int]) -> str:
    """The plain path (json.dumps), for values the fast formatter does not cover."""
    values = np.round(layers.astype(np.float64), DECIMALS).tolist()  # [L][n][H]
    features = [
        {"token": token,
         "layers": [{"index": index, "values": values[j][position]} for j, index in enumerate(layer_indexes)]}
        for position, token in enumerate(feature.tokens)
    ]
    return json.dumps({"linex_index": feature.guid, "features": features})


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


class OrderedLineWriter:
    """Writes results by unique_id in input order, holding those that finish early.

    ``render`` turns a result into its line; it runs only when the line is written, so
    held results stay compact (float32 arrays rather than their JSON text).
    """

    def __init__(self, stream: TextIO, render: Callable[[Any], str] = str, first_id: int = 0):
        self.stream = stream
        self.render = render
        self.next_id = first_id
        self.pending: dict[int, Any] = {}

    def add(self, unique_id: int, result: Any) -> int:
        """Queue a result; write every line that is now in order. Returns lines written."""
        self.pending[unique_id] = result
        written = 0
        while self.next_id in self.pending:
            self.stream.write(self.render(self.pending.pop(self.next_id)) + "\n")
            self.next_id += 1
            written += 1
        return written


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------


def extract_features(model: torch.nn.Module, examples: Iterable[InputExample], tokenizer, stream: TextIO,
                     layer_indexes: Sequence[int], max_seq_length: int, batch_size: int,
                     device: torch.device, task_id: int = 0, bf16: bool = False,
                     progress: cli.Progress | None = None, hidden_size: int = 768) -> int:
    """Encode every example and write its JSON line in input order. Returns lines written."""
    writer = OrderedLineWriter(stream, render=lambda result: format_example(*result, layer_indexes))
    features = (convert_example(example, tokenizer, max_seq_length) for example in examples)
    max_tokens = max(max_seq_length, WINDOW_VALUES // (len(layer_indexes) * hidden_size))
    logged = 0
    for window in grouping_windows(features, batch_size * CHUNK_BATCHES, max_tokens):
        for feature in window[: max(0, 5 - logged)]:
            log_features(feature)
        logged += len(window)
        for batch in length_grouped_batches(window, batch_size):
            layers = encode_batch(model, batch, layer_indexes, device, task_id, bf16)  # [L, B, T, H]
            for row, feature in enumerate(batch):
                # A copy of the real tokens only, so the padded batch array can be freed.
                writer.add(feature.guid, (feature, layers[:, row, : len(feature.tokens)].copy()))
            if progress is not None:
                progress.update(len(batch))
    return writer.next_id


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("--input_file", required=True, help="UTF-8 text, one example per line ('A ||| B' for a pair)")
    parser.add_argument("--vocab_file", required=True, help="WordPiece vocabulary of the model")
    parser.add_argument("--output_file", required=True, help="JSON lines, one per input line")
    parser.add_argument("--bert_config_file", required=True, help="config of the model (may set adapters)")
    parser.add_argument("--init_checkpoint", required=True,
                        help="weights: converted TF, Hugging Face folder/file, or a multi-task checkpoint")
    parser.add_argument("--layers",
                        help=f"comma-separated layer indexes, -1 = last; write negative lists as --layers=-1,-2 "
                             f"(default: {DEFAULT_LAYERS}, or every layer of a model with fewer)")
    parser.add_argument("--max_seq_length", type=int,
                        help=f"longer examples are truncated (pairs: the longer sentence first) (default: "
                             f"{DEFAULT_MAX_SEQ_LENGTH}, or max_position_embeddings of a model with fewer)")
    parser.add_argument("--do_lower_case", action="store_true", default=True,
                        help="lower-case and strip accents (the default; for uncased models)")
    parser.add_argument("--no_do_lower_case", "--no-do_lower_case", dest="do_lower_case", action="store_false",
                        help="keep case and accents (for cased models)")
    parser.add_argument("--batch_size", type=int, default=32, help="examples per forward pass")
    parser.add_argument("--task_id", type=glue.task_id_argument, default=None,
                        help="for a multi-task checkpoint with adapters, the task whose adapters to use: a task name, "
                             "or its index in the 'all' order (cola 0, mrpc 1, mnli 2, rte 3, sts 4, sst 5, qqp 6, "
                             "qnli 7; as run_multi_task.py), found in the checkpoint's tasks.json (beside it in a run "
                             "folder; without one the checkpoint's tasks are taken in the 'all' order)")
    cli.add_adapter_module_flag(parser)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or CUDA)")
    parser.add_argument("--no_cuda", action="store_true", help="run on the CPU even if CUDA is available")
    parser.add_argument("--local_rank", type=int, default=-1,
                        help="GPU of this process when launched per rank (the input is not sharded)")
    cli.add_debug_flag(parser)
    return parser


DEFAULT_LAYERS = "-1,-2,-3,-4"
DEFAULT_MAX_SEQ_LENGTH = 128


def resolve_defaults(args: argparse.Namespace, config: BertConfig) -> tuple[str, int]:
    """--layers and --max_seq_length, the defaults fitted to a small model with a warning
    (values given on the command line are taken as they are, and checked)."""
    layers, max_seq_length = args.layers, args.max_seq_length
    if layers is None:
        available = min(4, config.num_hidden_layers)
        layers = ",".join(str(-k) for k in range(1, available + 1))
        if available < 4:
            logger.warning("the model has %d layers: writing layers %s instead of the default %s",
                           config.num_hidden_layers, layers, DEFAULT_LAYERS)
    if max_seq_length is None:
        max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, config.max_position_embeddings)
        if max_seq_length < DEFAULT_MAX_SEQ_LENGTH:
            logger.warning("the model has %d positions (max_position_embeddings): --max_seq_length %d instead "
                           "of the default %d", config.max_position_embeddings, max_seq_length,
                           DEFAULT_MAX_SEQ_LENGTH)
    return layers, max_seq_length


def check_arguments(args: argparse.Namespace, config_max_positions: int) -> None:
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.max_seq_length < 3:
        raise UsageError(f"--max_seq_length must be at least 3 ([CLS] A [SEP] B [SEP]), got {args.max_seq_length}")
    if args.max_seq_length > config_max_positions:
        raise UsageError(f"--max_seq_length {args.max_seq_length} is larger than max_position_embeddings "
                         f"({config_max_positions}) of {args.bert_config_file}: use --max_seq_length "
                         f"{config_max_positions} or less")


def check_vocabulary(tokenizer: tokenization.FullTokenizer, config: BertConfig, args: argparse.Namespace) -> None:
    """Ids beyond the embedding table are an error; another size or a casing that
    disagrees with lower-casing is a warning (tokenization.vocabulary_warnings)."""
    largest_id = max(tokenizer.vocab.values())
    if largest_id >= config.vocab_size:
        raise ConfigError(f"{args.vocab_file} has token ids up to {largest_id}, but vocab_size in "
                         f"{args.bert_config_file} is {config.vocab_size}: the vocabulary does not "
                         f"belong to this model")
    for problem in tokenization.vocabulary_warnings(tokenizer.vocab, config.vocab_size, args.do_lower_case):
        logger.warning("%s %s (%s)", args.vocab_file, problem,
                       "--no_do_lower_case keeps case" if not args.do_lower_case else "lower-casing is the default")


def run(args: argparse.Namespace) -> int:
    if args.adapter_module:
        load_adapter_module(args.adapter_module)
    config = BertConfig.from_json_file(args.bert_config_file)
    check_adapter_registered(config, args.bert_config_file)
    args.layers, args.max_seq_length = resolve_defaults(args, config)
    check_arguments(args, config.max_position_embeddings)
    layer_indexes = parse_layers(args.layers, config.num_hidden_layers)
    num_examples = count_examples(args.input_file)  # fails on a bad line before any model work
    if num_examples == 0:
        raise DataError(f"{args.input_file}: input file is empty: nothing to extract")
    tokenizer = tokenization.FullTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
    check_vocabulary(tokenizer, config, args)
    model, task_id = load_model(config, args.init_checkpoint, args.task_id)
    device = select_device(args.no_cuda, args.local_rank)
    model.to(device)
    if device.type == "cuda" and args.local_rank == -1 and torch.cuda.device_count() > 1:
        model = torch.nn.DataParallel(model)
    logger.info("device: %s, bf16: %s, task: %d, %d examples", device, args.bf16, task_id, num_examples)
    with atomic_text_output(args.output_file) as stream, \
            cli.Progress(total=num_examples, unit="line", desc="extracting") as progress:
        written = extract_features(model, read_examples(args.input_file), tokenizer, stream, layer_indexes,
                                   args.max_seq_length, args.batch_size, device, task_id, args.bf16, progress,
                                   hidden_size=config.hidden_size)
    logger.info("wrote %d lines to %s", written, args.output_file)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status as in cli.py: 0 done, 2 bad input (one ``error:`` line), 128 + N after signal N."""
    args = build_parser().parse_args(argv)
    cli.setup_logging()
    return cli.run_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
