"""Predict GLUE labels for new text with a model trained by run_multi_task.py.

    python predict.py --model_dir runs/pals --task sst --input_file in.txt --output_file out.jsonl

The model: a run folder (--model_dir: best_model.pth, config.json, vocab.txt,
tasks.json), or a shared BERT and task adapter files as run_multi_task.py takes them
(--init_checkpoint best_model.pth --adapter_checkpoints a,b
--vocab_file vocab.txt).

Input: one example per line; ``A ||| B`` or ``A<TAB>B`` is a pair. Or JSON lines (a
.jsonl file, or --input_format jsonl): {"text_a": ..., "text_b": ..., "task": ...} with
text_b and task optional; a line's own task is used instead of --task. --task: one task,
a comma list, or all (every task of the model); lines of several tasks are batched
together (one forward pass per batch).

Output: one JSON object per input line and task, in input order::

    {"line": 1, "task": "rte", "label": "entailment",
     "probabilities": {"not_entailment": 0.1, "entailment": 0.9}}
    {"line": 2, "task": "sts", "label": "3.210", "score": 3.21}

with "truncated": true when the line was cut to --max_seq_length tokens (counted in one
warning). Probabilities and scores are rounded to 3 decimals (--full_precision: as
computed). --output_file - writes to standard output; a file appears under its name only
when complete. The logic lives in inference.py (Predictor, read_requests).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import sys
from collections.abc import Sequence

import checkpointing
import cli
import inference
import modeling
from errors import DataError, UsageError
from inference import Predictor

logger = logging.getLogger("predict")

DECIMALS = 3  # probabilities and scores in the output, unless --full_precision


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    model = parser.add_argument_group("the model")
    model.add_argument("--model_dir", help="output folder of run_multi_task.py (best_model.pth, config.json, "
                                           "vocab.txt, tasks.json)")
    model.add_argument("--adapter_checkpoints", help="instead of --model_dir: comma list of task adapter files "
                                                     "(with --init_checkpoint and --vocab_file)")
    model.add_argument("--init_checkpoint", help="with --adapter_checkpoints: the shared BERT")
    model.add_argument("--vocab_file", help="with --adapter_checkpoints: the WordPiece vocabulary")
    cli.add_adapter_module_flag(model)
    data = parser.add_argument_group("input and output")
    data.add_argument("--input_file", required=True,
                      help="UTF-8, one example per line ('A ||| B' or 'A<TAB>B' for a pair), or JSON lines")
    data.add_argument("--input_format", default="auto", choices=inference.INPUT_FORMATS,
                      help="auto: JSON lines for a .jsonl or .ndjson file, else text")
    data.add_argument("--output_file", required=True, help="JSON lines, one per input line and task ('-': stdout)")
    data.add_argument("--task", help="task(s) to predict: one, a comma list, or 'all' (every task of the model); "
                                     "JSON lines may name their own")
    data.add_argument("--full_precision", action="store_true",
                      help="write probabilities and scores as computed (default: rounded to %d decimals)"
                           % DECIMALS)
    run_options = parser.add_argument_group("how to run")
    run_options.add_argument("--max_seq_length", type=int,
                             help="longer inputs are truncated (pairs: the longer sentence first), as in training "
                                  "(default: the training run's own value, from its args.json or what the adapter "
                                  "files record; 128 for files of earlier versions)")
    run_options.add_argument("--batch_size", type=int, default=32, help="rows per forward pass")
    run_options.add_argument("--do_lower_case", action="store_const", const=True, default=None,
                             help="lower-case and strip accents (default: as the run did, from its args.json; "
                                  "else unless the vocabulary looks cased)")
    run_options.add_argument("--no_do_lower_case", dest="do_lower_case", action="store_const", const=False,
                             help="keep case and accents (default: when the vocabulary is cased)")
    run_options.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or CUDA)")
    run_options.add_argument("--no_cuda", action="store_true", help="run on the CPU even if CUDA is available")
    cli.add_debug_flag(run_options)
    return parser


def load_predictor(args: argparse.Namespace) -> Predictor:
    if args.adapter_module:
        modeling.load_adapter_module(args.adapter_module)
    options = dict(max_seq_length=args.max_seq_length, batch_size=args.batch_size, bf16=args.bf16,
                   device="cpu" if args.no_cuda else None, do_lower_case=args.do_lower_case)
    if args.adapter_checkpoints:
        if args.model_dir:
            raise UsageError("give --model_dir or --adapter_checkpoints, not both")
        if not (args.init_checkpoint and args.vocab_file):
            raise UsageError("--adapter_checkpoints needs --init_checkpoint (the shared BERT) and --vocab_file")
        files = [path for path in args.adapter_checkpoints.split(",") if path]
        return Predictor.from_adapters(args.init_checkpoint, files, args.vocab_file, **options)
    if not args.model_dir:
        raise UsageError("give --model_dir (an output folder of run_multi_task.py) or --adapter_checkpoints")
    if args.init_checkpoint or args.vocab_file:
        raise UsageError("--init_checkpoint and --vocab_file go with --adapter_checkpoints; "
                         "--model_dir holds its own weights and vocabulary")
    return Predictor.from_run(args.model_dir, **options)


def output_stream(path: str):
    """Standard output for "-", else a file written atomically."""
    if path == "-":
        return contextlib.nullcontext(sys.stdout)
    return checkpointing.atomic_text_output(path)


def run(args: argparse.Namespace) -> int:
    predictor = load_predictor(args)
    tasks = predictor.resolve_tasks(args.task) if args.task else None

    def requests():
        return inference.read_requests(args.input_file, predictor, tasks, args.input_format)

    # Every line is checked before any output is written; JSON lines may name their own tasks.
    total, requested = 0, {}
    for _, request in requests():
        total += 1
        requested[request.task] = True
    if total == 0:
        raise DataError(f"{args.input_file}: input file is empty: nothing to predict")
    logger.info("tasks %s (the model has %s); device %s; %d predictions", ", ".join(requested),
                ", ".join(predictor.task_names), predictor.device, total)
    truncated_lines: list[int] = []
    with output_stream(args.output_file) as stream, \
            cli.Progress(total=total, unit="prediction", desc="predicting") as progress:
        numbered, plain = itertools.tee(requests())
        results = predictor.predict((request for _, request in plain), progress)
        for (line, _), result in zip(numbered, results):
            if result.get("truncated") and truncated_lines[-1:] != [line]:
                truncated_lines.append(line)
            if not args.full_precision:
                result = rounded(result)
            stream.write(json.dumps({"line": line, **result}) + "\n")
    warning = inference.truncation_warning(truncated_lines, predictor.max_seq_length)
    if warning:
        logger.warning(warning)
    logger.info("wrote %d predictions to %s", total,
                "standard output" if args.output_file == "-" else args.output_file)
    return total


def rounded(result: dict) -> dict:
    """A result with its probabilities and score rounded to DECIMALS (what a person reads;
    the label is chosen from the unrounded logits)."""
    result = dict(result)
    if "probabilities" in result:
        result["probabilities"] = {label: round(p, DECIMALS) for label, p in result["probabilities"].items()}
    if "score" in result:
        result["score"] = round(result["score"], DECIMALS)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status as in cli.py: 0 done, 2 bad input (one ``error:`` line), 128 + N after signal N."""
    args = build_parser().parse_args(argv)
    cli.setup_logging()
    return cli.run_main(run, args)


if __name__ == "__main__":
    sys.exit(main())
