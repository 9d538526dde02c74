"""Table 1 of the paper in miniature: PALs against a shared BERT with task heads and against separately fine-tuned BERTs.

Three methods on the demo data (demo_data.write_demo_glue, seed 0) with the real
MiniLM weights, each once per seed (--seeds, default 1 2 3):

  pals     PALs multi-task: demo.py's training run (demo.TRAINING_FLAGS with demo.CONFIG)
  shared   plain multi-task: the same flags with configs/minilm_bert_config.json
           (one shared BERT, one head per task)
  single   each task fine-tuned alone (--tasks <task>, minilm_bert_config.json), given as
           many optimizer updates as that task drew in the pals run of the same seed: one
           epoch of that many steps, evaluated at its end

The multi-task runs report their best epoch by GLUE average (eval_results.json), as the
demo does. A run folder does not record how many steps drew each task, so the draws are
computed by replaying glue.TaskSampler with the pals run's task sizes, sampling method,
epochs, steps and seed, read from its own arguments (the draws are deterministic; the
multi-task runs log every step, --logging_steps 1, so their train.log shows the same
draws). Prints per task and method the median (min-max) over the seeds of the task's
score (glue.task_score), the GLUE average, and each method's parameters for the eight
GLUE tasks with the share that serves a single task; --out writes the same as JSON.

    python benchmarks/paper_comparison.py                  # 3 seeds x 10 runs of the demo's size
    python benchmarks/paper_comparison.py --quick --tasks rte,mrpc --seeds 1 --work_dir /tmp/pc

Runs go to --work_dir as <method>_seed<N> and single_<task>_seed<N> (each run's train.log,
args.json and eval_results.json stay; best_model.pth is removed to save disk space, but
--keep_models keeps the multi-task runs' for benchmarks/demo_errors.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import checkpointing  # noqa: E402
import cli  # noqa: E402
import demo  # noqa: E402
import demo_data  # noqa: E402
import glue  # noqa: E402
import modeling  # noqa: E402
import reports  # noqa: E402
import run_multi_task  # noqa: E402
import training  # noqa: E402
from errors import UsageError  # noqa: E402

BERT_CONFIG = ROOT / "configs" / "minilm_bert_config.json"
METHODS = {"pals": "PALs multi-task", "shared": "plain multi-task", "single": "single-task"}
QUICK_FLAGS = ["--steps_per_epoch", "3", "--num_train_epochs", "2"]  # a check of the script, not a result


def run_argv(data_dir: Path, output_dir: Path, config: Path, tasks: str, seed: int, extra: list[str]) -> list[str]:
    """run_multi_task.py's arguments: the demo's flags, then ours, which win (argparse keeps
    the last value of a flag given twice)."""
    weights = demo.minilm_dir()
    return ["--data_dir", str(data_dir), "--bert_config_file", str(config), "--vocab_file", str(weights / "vocab.txt"),
            "--init_checkpoint", str(weights), "--output_dir", str(output_dir),
            *[flag for flag in demo.TRAINING_FLAGS if flag != "--do_predict"],
            "--tasks", tasks, "--seed", str(seed), "--no_plot", "--no_save_adapters", *extra]


def train(argv: list[str], output_dir: Path, keep_model: bool = False) -> dict:
    """One run of run_multi_task.py in its own process; its best evaluation."""
    finished = subprocess.run([sys.executable, str(ROOT / "run_multi_task.py"), *argv],
                              capture_output=True, text=True, cwd=ROOT)
    if finished.returncode != 0:
        lines = finished.stderr.strip().splitlines() or ["no output"]
        raise UsageError(f"the run in {output_dir} failed (exit {finished.returncode}): {lines[-1]}; "
                         f"see {output_dir / 'train.log'}")
    if not keep_model:  # the scores are all we keep
        (output_dir / checkpointing.BEST_MODEL_FILE).unlink(missing_ok=True)
    return reports.read_eval_results(output_dir)


def draws_per_task(argv: list[str], task_names: list[str]) -> dict[str, int]:
    """How many optimizer steps drew each task in the run with these arguments: the
    draws of training.Trainer (one glue.TaskSampler draw per step, start_epoch before each
    epoch), replayed with the run's settings and task sizes."""
    args = run_multi_task.build_parser().parse_args(argv)
    settings = run_multi_task.settings_from_args(args, Path(args.output_dir), len(task_names))
    if settings.use_original_sizes:
        sizes = [glue.ORIGINAL_SIZES[name] for name in task_names]
    else:  # one training feature per example (Trainer.task_sizes)
        sizes = [len(glue.read_examples(args.data_dir, name, "train")) for name in task_names]
    sampler = glue.TaskSampler(sizes, settings.sample, settings.num_train_epochs, settings.seed)
    counts = dict.fromkeys(task_names, 0)
    for epoch in range(settings.num_train_epochs):
        sampler.start_epoch(epoch)
        for _ in range(settings.steps_per_epoch):
            counts[task_names[sampler.next_task()]] += 1
    return counts


def parameter_counts(config_file: Path, separate: bool) -> dict:
    """Parameters of a method's model(s) for the eight GLUE tasks: one model with a head
    (and adapters) per task, or one model per task (``separate``). ``task_specific``
    counts what serves one task only: heads and adapters, or all of a separate model."""
    config = modeling.BertConfig.from_json_file(config_file)
    groups = [[name] for name in glue.ORIGINAL_TASK_ORDER] if separate else [list(glue.ORIGINAL_TASK_ORDER)]
    total = specific = 0
    for names in groups:
        model = training.build_model(config, names, None, False)
        total += modeling.count_parameters(model)
        specific += sum(p.numel() for key, p in model.named_parameters() if modeling.task_of_key(key) is not None)
    return {"total": total, "task_specific": total if separate else specific}


def spread(values: list[float | None]) -> dict | None:
    """Median, min and max over the seeds (None when a seed has no value)."""
    if not values or any(v is None for v in values):
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def shown(summary: dict | None) -> str:
    if summary is None:
        return "-"
    return f"{summary['median']:.3f} ({summary['min']:.3f}-{summary['max']:.3f})"


def compare(args: argparse.Namespace, work_dir: Path) -> dict:
    try:
        task_names = glue.resolve_task_names(args.tasks)
    except ValueError as err:
        raise UsageError(f"--tasks {args.tasks}: {err}") from None
    data_dir = work_dir / "data"
    demo_data.write_demo_glue(data_dir, seed=0)
    quick = QUICK_FLAGS if args.quick else []
    scores: dict[str, list[dict[str, float | None]]] = {method: [] for method in METHODS}
    updates = {}
    for seed in args.seeds:
        for method, config in (("pals", demo.CONFIG), ("shared", BERT_CONFIG)):
            output_dir = work_dir / f"{method}_seed{seed}"
            # --logging_steps 1: train.log names the task of every step
            argv = run_argv(data_dir, output_dir, config, args.tasks, seed,
                            [*quick, "--logging_steps", "1"])
            scores[method].append(train(argv, output_dir, args.keep_models)["scores"])
            if method == "pals":
                updates[seed] = draws_per_task(argv, task_names)
            print(f"seed {seed} {method}: {json.dumps(scores[method][-1])}", flush=True)
        single: dict[str, float | None] = {}
        for name in task_names:
            steps = updates[seed][name]
            if steps == 0:  # never drawn: nothing to fine-tune with
                single.update(dict.fromkeys(["mnli", "mnli-mm"] if name == "mnli" else [name]))
                continue
            output_dir = work_dir / f"single_{name}_seed{seed}"
            argv = run_argv(data_dir, output_dir, BERT_CONFIG, name, seed,
                            ["--steps_per_epoch", str(steps), "--num_train_epochs", "1"])
            single.update(train(argv, output_dir)["scores"])
        scores["single"].append(single)
        print(f"seed {seed} single ({json.dumps(updates[seed])} updates): {json.dumps(single)}", flush=True)
    # The score entries in task order (eval_results.json sorts them), MNLI mismatched its own
    keys = [training.score_key(name, split) for name in task_names for split in glue.TASKS[name].dev_splits]
    table = {}
    for method, runs in scores.items():
        averages = [None if None in run.values() else glue.glue_average(run) for run in runs]
        table[method] = {"name": METHODS[method], "scores": {key: spread([run[key] for run in runs]) for key in keys},
                         "glue_average": spread(averages), "per_seed": dict(zip(args.seeds, runs))}
    table["pals"]["parameters"] = parameter_counts(demo.CONFIG, separate=False)
    table["shared"]["parameters"] = parameter_counts(BERT_CONFIG, separate=False)
    table["single"]["parameters"] = parameter_counts(BERT_CONFIG, separate=True)
    return {"seeds": args.seeds, "tasks": task_names, "quick": args.quick, "training_flags": demo.TRAINING_FLAGS,
            "single_task_updates": updates, "methods": table}


def print_table(result: dict) -> None:
    methods = result["methods"]
    print(f"\nDemo data, seeds {result['seeds']}: best-epoch dev score per task, median (min-max) over the seeds"
          + (" (--quick: a check of the script, not a result)" if result["quick"] else "") + "\n")
    print("| task | " + " | ".join(m["name"] for m in methods.values()) + " |")
    print("|---|" + "---|" * len(methods))
    for key in methods["pals"]["scores"]:
        print(f"| {key} | " + " | ".join(shown(m["scores"][key]) for m in methods.values()) + " |")
    print("| GLUE average | " + " | ".join(shown(m["glue_average"]) for m in methods.values()) + " |")
    shared = methods["shared"]["parameters"]
    bert = shared["total"] - shared["task_specific"]  # one BERT without heads
    cells = [f"{p['total'] / 1e6:.2f}M = {p['total'] / bert:.2f}x BERT; {p['task_specific']:,} task-specific "
             f"({100 * p['task_specific'] / p['total']:.2f}%)" for p in (m["parameters"] for m in methods.values())]
    print("| parameters (8 tasks) | " + " | ".join(cells) + " |")
    for seed, counts in result["single_task_updates"].items():
        print(f"\nsingle-task updates, seed {seed} (the draws of the PALs run): "
              + ", ".join(f"{name} {n}" for name, n in counts.items()))


def run(args: argparse.Namespace) -> None:
    if args.work_dir:
        result = compare(args, Path(args.work_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="bert-pals-comparison-") as folder:
            result = compare(args, Path(folder))
    print_table(result)
    if args.out:
        checkpointing.atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run of each method per seed")
    parser.add_argument("--tasks", default="all", help="'all' (the eight GLUE tasks) or a comma list")
    parser.add_argument("--work_dir", help="where the data and the runs go (default: a temporary folder, removed)")
    parser.add_argument("--out", help="also write the table as JSON to this file")
    parser.add_argument("--quick", action="store_true",
                        help=f"multi-task runs of {' '.join(QUICK_FLAGS)}: a check of the script")
    parser.add_argument("--keep_models", action="store_true",
                        help="keep the multi-task runs' best_model.pth (95 MB each), for benchmarks/demo_errors.py")
    return cli.run_main(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
