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
import logging
import os
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
from modeling import BertConfig

logger = logging.getLogger("run_multi_task")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    original = parser.add_argument_group("the original's flags")
    original.add_argument("--data_dir", required=True, help="GLUE root holding CoLA/, MRPC/, ...")
    original.add_argument("--bert_config_file", required=True, help="JSON config (configs/*.json)")
    original.add_argument("--vocab_file", required=True, help="WordPiece vocabulary")
    original.add_argument("--output_dir", required=True, help="where models, metrics and plots go")
    original.add_argument("--init_checkpoint", help="pretrained BERT: original .pth/.bin, HF folder or file")
    original.add_argument("--do_lower_case", action="store_true", help="lower-case and strip accents (uncased BERT)")
    original.add_argument("--max_seq_length", type=int, default=128)
    original.add_argument("--multi", action="store_true",
                          help="accepted for compatibility: adapters missing from the checkpoint always keep their init")
    original.add_argument("--do_train", action="store_true")
    original.add_argument("--optim", default="normal",
                          help="'normal', or anything else to train PAL attention with its own optimizer at lr 3e-4")
    original.add_argument("--sample", default="rr", choices=glue.SAMPLING_METHODS, help="task sampling")
    original.add_argument("--do_eval", action="store_true", help="evaluate on dev after every epoch")
    original.add_argument("--train_batch_size", type=int, default=32,
                          help="examples per optimizer step, over all ranks and accumulation steps")
    original.add_argument("--eval_batch_size", type=int, default=8)
    original.add_argument("--h_aug", default="n/a", help="override hidden_size_aug")
    original.add_argument("--tasks", default="all",
                          help="'all' (the original eight), 'single' (with --task_id), 'inf', or a comma list")
    original.add_argument("--task_id", type=int, default=1, help="with --tasks single: index in the 'all' order")
    original.add_argument("--learning_rate", type=float, default=5e-5)
    original.add_argument("--num_train_epochs", type=float, default=3.0)
    original.add_argument("--warmup_proportion", type=float, default=0.1)
    original.add_argument("--save_checkpoints_steps", type=int, default=1000,
                          help="write a resumable training checkpoint every N optimizer steps (0: per epoch only)")
    original.add_argument("--freeze", action="store_true", help="train only adapters, LayerNorms and heads")
    original.add_argument("--no_cuda", action="store_true")
    original.add_argument("--local_rank", type=int, default=-1, help="set by the launcher (or LOCAL_RANK)")
    original.add_argument("--seed", type=int, default=42)
    original.add_argument("--gradient_accumulation_steps", type=int, default=1)

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
    added.add_argument("--skip_unsampled_updates", action="store_true",
                       help="do not update a task's parameters on steps that drew another task")
    added.add_argument("--do_predict", action="store_true", help="write GLUE test-set submission files")
    added.add_argument("--predict_checkpoint",
                       help="model folder (or best_model.pth) to predict with; default: this run's best model")
    added.add_argument("--adapter_checkpoints",
                       help="comma list of task adapter files to rebuild the model from "
                            "(with --init_checkpoint pointing at the shared BERT)")
    added.add_argument("--keep_epoch_checkpoints", action="store_true",
                       help="also keep checkpoints/epoch_<n>.pt after every epoch (large)")
    added.add_argument("--no_save_adapters", action="store_true", help="do not write per-task adapter files")
    added.add_argument("--overwrite_output_dir", action="store_true")
    added.add_argument("--resume", action="store_true", help="continue the run in --output_dir")
    added.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU or CUDA)")
    added.add_argument("--fp16", action="store_true", help="float16 autocast with loss scaling (CUDA)")
    added.add_argument("--skip_nonfinite_loss", action="store_true",
                       help="skip a step whose loss is NaN/inf instead of stopping")
    added.add_argument("--layer_norm_init", default="original", choices=training.LAYER_NORM_INITS,
                       help="LayerNorms not loaded from the checkpoint (adapters, modules on top): the "
                            "original's gamma, beta ~ N(0, 0.02), or 'standard' gamma 1, beta 0")
    added.add_argument("--no_plot", action="store_true")
    cli.add_debug_flag(added)
    return parser


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


# The folders of --output_dir this script writes files in.
RUN_FOLDERS = (".", checkpointing.TRAINING_CHECKPOINT_DIR, checkpointing.ADAPTER_DIR, "submission")
# What a run that failed on bad input leaves behind: not results, so not "busy".
NOT_RESULTS = ("train.log", cli.OutputDirLock.FILE_NAME)


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


def load_config(args: argparse.Namespace, num_tasks: int) -> BertConfig:
    config = BertConfig.from_json_file(args.bert_config_file)
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


def check_vocab_fits(tokenizer: tokenization.FullTokenizer, config: BertConfig, vocab_file, config_file) -> None:
    """Every token id must index the embedding table (else an IndexError mid-training)."""
    largest = max(tokenizer.vocab.values())
    if largest >= config.vocab_size:
        raise ConfigError(f"{vocab_file} has token ids up to {largest}, but vocab_size in {config_file} is "
                          f"{config.vocab_size}: the vocabulary does not belong to this model")


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------

def settings_from_args(args, output_dir: Path, num_tasks: int) -> training.TrainingSettings:
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
        select_by_original_sum=original,
        dropout_off_after_first_eval=original,
        use_original_sizes=args.original_sizes or original,
        split_attention_optimizer=args.optim != "normal",
        skip_unsampled_updates=args.skip_unsampled_updates, save_checkpoints_steps=args.save_checkpoints_steps,
        bf16=args.bf16, fp16=args.fp16, skip_nonfinite_loss=args.skip_nonfinite_loss,
        save_adapters=not args.no_save_adapters, plot=not args.no_plot,
        keep_epoch_checkpoints=args.keep_epoch_checkpoints)


def check_batch_split(args, ctx: training.DistributedContext) -> None:
    micro_batch = args.train_batch_size // args.gradient_accumulation_steps
    if micro_batch % ctx.world_size:
        raise UsageError(f"a batch of {micro_batch} examples per accumulation step does not split "
                         f"evenly over {ctx.world_size} processes")


def build_model_for_run(args, config: BertConfig, task_names: list[str]):
    if args.adapter_checkpoints:
        if not args.init_checkpoint:
            raise UsageError("--adapter_checkpoints needs --init_checkpoint (the shared BERT)")
        files = [p for p in args.adapter_checkpoints.split(",") if p]
        model, adapter_tasks = checkpointing.build_model_from_adapters(args.init_checkpoint, files)
        if adapter_tasks != task_names:
            raise UsageError(f"--adapter_checkpoints hold tasks {adapter_tasks}, but --tasks gives {task_names}")
        return model
    return training.build_model(config, task_names, args.init_checkpoint, args.freeze, args.layer_norm_init)


def run(args: argparse.Namespace) -> int:
    validate_args(args)
    ctx = training.setup_distributed(args.local_rank, args.no_cuda)
    lock = None
    if ctx.is_main:
        output_dir = check_output_dir(args)
        lock = cli.OutputDirLock(output_dir).acquire()
    else:
        output_dir = Path(args.output_dir)
    try:
        return _run_locked(args, ctx, output_dir)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(args: argparse.Namespace, ctx: training.DistributedContext, output_dir: Path) -> int:
    leftovers: list[Path] = []
    if ctx.is_main:
        # A run killed outright (SIGKILL, power loss) cannot remove its temporary files.
        leftovers = checkpointing.remove_partial_files(*(output_dir / sub for sub in RUN_FOLDERS))
    ctx.barrier()
    cli.setup_logging(output_dir / "train.log", ctx.is_main)
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
    check_vocab_fits(tokenizer, config, args.vocab_file, args.bert_config_file)
    logger.info("tasks: %s; device %s; %d process(es)", ", ".join(task_names), ctx.device, ctx.world_size)

    if args.do_train or args.do_eval:
        tasks = training.load_task_data(args.data_dir, task_names, tokenizer, args.max_seq_length,
                                        with_train=args.do_train, with_dev=True)
        model = build_model_for_run(args, config, task_names)
        logger.info("model: %s parameters", f"{modeling.count_parameters(model):,}")
        settings = settings_from_args(args, output_dir, len(task_names))
        if args.do_train:
            trainer = training.Trainer(model, tasks, settings, ctx)
            if args.resume:
                trainer.load_state_dict(checkpointing.load_training_checkpoint(output_dir),
                                        source=checkpointing.training_checkpoint_path(output_dir))
            trainer.train()
        else:
            evaluate_only(model, tasks, settings, ctx)
    if args.do_predict and ctx.is_main:
        predict(args, output_dir, task_names, tokenizer, ctx)
    ctx.barrier()
    return 0


def evaluate_only(model, tasks, settings, ctx) -> None:
    """--do_eval without --do_train: score the given checkpoint once (the original did nothing)."""
    if not ctx.is_main:
        return
    result = training.evaluate_tasks(model.to(ctx.device), tasks, settings, ctx.device)
    reports.write_evaluation_only(settings.output_dir, result)


def predict(args, output_dir: Path, task_names: list[str], tokenizer, ctx) -> None:
    source = Path(args.predict_checkpoint) if args.predict_checkpoint else output_dir
    folder = source if source.is_dir() else source.parent
    weights = folder / checkpointing.BEST_MODEL_FILE if source.is_dir() else source
    config = BertConfig.from_json_file(folder / checkpointing.CONFIG_FILE)
    saved_tasks = [t["name"] for t in checkpointing.read_tasks_file(folder / checkpointing.TASKS_FILE)]
    if saved_tasks != task_names:
        raise UsageError(f"{folder} was trained on tasks {saved_tasks}, but --tasks gives {task_names}")
    model = modeling.BertForMultiTask(config, [glue.TASKS[n].num_labels for n in task_names])
    checkpointing.load_pretrained_weights(model, weights, log=logger)
    written = training.predict_test_sets(model, task_names, args.data_dir, tokenizer, args.max_seq_length,
                                         args.eval_batch_size, ctx.device, output_dir / "submission",
                                         bf16=args.bf16, fp16=args.fp16)
    logger.info("wrote %d submission files to %s", len(written), output_dir / "submission")


def main(argv: list[str] | None = None) -> int:
    """Exit status as in cli.py: 0 done; 2 bad input (one ``error:`` line); 128 + signal
    number when SIGINT/SIGTERM stopped the run (during training after saving a resumable
    checkpoint)."""
    return cli.run_main(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
