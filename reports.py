"""The results files of a run: eval_results.json (the best evaluation), metrics.jsonl
(one record per task, split and evaluation) and training_curves.png.

Every file goes through checkpointing's atomic writer, so a crash leaves the previous
version or none, never half a file.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import checkpointing

EVAL_RESULTS_FILE = "eval_results.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def best_evaluation_record(result: dict[str, Any]) -> dict[str, Any]:
    """What eval_results.json holds: scores, averages and every metric per task entry."""
    return {"epoch": result["epoch"], "global_step": result["global_step"], "glue_average": result["glue_average"],
            "selection_score": result["selection_score"], "scores": result["scores"],
            "metrics": {r["task"]: {k: v for k, v in r.items() if k not in ("epoch", "global_step", "task")}
                        for r in result["records"]}}


def write_eval_results(output_dir: Path, result: dict[str, Any]) -> None:
    checkpointing.atomic_write_text(Path(output_dir) / EVAL_RESULTS_FILE, to_json(best_evaluation_record(result)))


def write_evaluation_only(output_dir: Path, result: dict[str, Any]) -> None:
    """--do_eval without training: the evaluation with every record under its task."""
    report = {key: value for key, value in result.items() if key != "records"}
    report["metrics"] = {record["task"]: record for record in result["records"]}
    checkpointing.atomic_write_text(Path(output_dir) / EVAL_RESULTS_FILE, to_json(report))


def read_eval_results(output_dir: Path) -> dict[str, Any]:
    path = Path(output_dir) / EVAL_RESULTS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_epoch_reports(output_dir: Path, history: Sequence[dict[str, Any]],
                        probabilities: Sequence[Sequence[float]], task_names: Sequence[str], plot: bool) -> None:
    """metrics.jsonl (the whole history so far) and, if asked, the plot."""
    lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in history)
    checkpointing.atomic_write_text(Path(output_dir) / METRICS_FILE, lines)
    if plot:
        plot_training_curves(history, probabilities, task_names, Path(output_dir) / PLOT_FILE)


def plot_training_curves(history: Sequence[dict[str, Any]], probabilities: Sequence[Sequence[float]],
                         task_names: Sequence[str], path: Path) -> None:
    """training_curves.png: see ``training_curves_figure``."""
    import matplotlib.pyplot as plt

    figure = training_curves_figure(history, probabilities, task_names)
    with checkpointing.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def training_curves_figure(history: Sequence[dict[str, Any]], probabilities: Sequence[Sequence[float]],
                           task_names: Sequence[str]):
    """Three panels per epoch: the dev score of each task (MCC and Pearson can go below
    0), each task's mean training loss, and the task sampling probabilities."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {name: plt.cm.tab10(index % 10) for index, name in enumerate(task_names)}
    figure, (scores, losses, sampling) = plt.subplots(1, 3, figsize=(17, 4.5))
    for key in dict.fromkeys(r["task"] for r in history):
        points = [(r["epoch"], r["score"]) for r in history if r["task"] == key]
        task = "mnli" if key == "mnli-mm" else key  # MNLI mismatched: dashed, MNLI's colour
        scores.plot([e for e, _ in points], [s for _, s in points], marker="o", label=key,
                    color=colours.get(task), linestyle="--" if key == "mnli-mm" else "-")
    scores.set(title="dev score per task", xlabel="epoch", ylabel="score (-1 to 1)")
    for name in task_names:  # one training loss per task and epoch (the mnli-mm record repeats mnli's)
        points = [(r["epoch"], r["train_loss"]) for r in history
                  if r["task"] == name and r.get("train_loss") is not None]
        if points:
            losses.plot([e for e, _ in points], [v for _, v in points], marker="o", label=name, color=colours[name])
    losses.set(title="mean training loss per task", xlabel="epoch", ylabel="loss")
    probs = np.asarray(probabilities)
    if probs.size:
        for index, name in enumerate(task_names):
            sampling.plot(range(len(probs)), probs[:, index], marker=".", label=name, color=colours[name])
    sampling.set(title="task sampling probability", xlabel="epoch", ylabel="probability")
    for axis in (scores, losses, sampling):
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
