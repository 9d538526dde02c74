"""What a run reports: the results files (eval_results.json, the best evaluation;
metrics.jsonl, one record per task, split and evaluation; training_curves.png) and,
while it trains, ``TrainingLog``: a line every --logging_steps steps, TensorBoard
scalars and the closing summary.

Every file goes through checkpointing's atomic writer, so a crash leaves the previous
version or none, never half a file.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import checkpointing
import cli
from errors import UsageError

logger = logging.getLogger("run_multi_task")

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
    0), each task's mean training loss, and the task sampling probabilities. A task has
    one colour in all three, so one legend below the panels serves them all (a legend
    inside a panel would cover its points)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {name: plt.cm.tab10(index % 10) for index, name in enumerate(task_names)}
    figure, (scores, losses, sampling) = plt.subplots(1, 3, figsize=(17, 5), layout="constrained")
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
    entries: dict[str, Any] = {}  # label -> line, the first panel's first
    for axis in (scores, losses, sampling):
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        for handle, label in zip(*axis.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        figure.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=len(entries),
                      fontsize=9, frameon=False)
    return figure


# --------------------------------------------------------------------------------------
# The training log
# --------------------------------------------------------------------------------------

class TrainingLog:
    """What a run says while it trains (rank 0; ``enabled=False`` elsewhere says nothing).

    ``settings`` is the run's TrainingSettings (``logging_steps``, ``logging_dir``,
    ``output_dir``, the sizes it names). Used as a context manager around the training
    loop, it holds the TensorBoard writer when ``logging_dir`` is set.
    """

    def __init__(self, total_steps: int, settings: Any, enabled: bool = True):
        self.total_steps = total_steps
        self.settings = settings
        self.enabled = enabled
        self.examples = 0  # trained in this session, over all ranks
        self.tokens = 0  # real tokens (padding not counted)
        self.tensorboard = None  # a SummaryWriter inside ``with log:``
        self._start = time.monotonic()
        self._start_step = 0
        self._window = self._new_window()

    def _new_window(self) -> dict[str, Any]:
        """The steps since the last line: their count, summed finite losses, the totals then."""
        return {"start": time.monotonic(), "steps": 0, "finite": 0, "loss": 0.0,
                "examples": self.examples, "tokens": self.tokens}

    def __enter__(self) -> TrainingLog:
        if self.enabled and self.settings.logging_dir is not None:
            self.tensorboard = tensorboard_summary_writer()(log_dir=str(self.settings.logging_dir))
        return self

    def __exit__(self, *exc_info) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def start(self, global_step: int) -> None:
        self._start, self._start_step = time.monotonic(), global_step
        self._window = self._new_window()
        settings = self.settings
        logger.info("training: %d steps (%d epochs of %d), %d examples per step, from step %d", self.total_steps,
                    settings.num_train_epochs, settings.steps_per_epoch, settings.train_batch_size, global_step)

    def count(self, examples: int, tokens: int) -> None:
        """A micro-batch drawn: its examples and real tokens (over all ranks)."""
        self.examples += examples
        self.tokens += tokens

    def step(self, global_step: int, epoch: int, task: str, loss: float,
             learning_rate: Callable[[], float]) -> None:
        """Every ``logging_steps`` steps: one line (step/total, task, loss, examples/s,
        real tokens/s, elapsed, ETA) and the same scalars in TensorBoard."""
        window = self._window
        window["steps"] += 1
        if math.isfinite(loss):  # a skipped step (--skip_nonfinite_loss) has no loss
            window["finite"] += 1
            window["loss"] += loss
        every = self.settings.logging_steps
        if not self.enabled or not every or global_step % every:
            return
        now = time.monotonic()
        seconds = max(now - window["start"], 1e-9)
        examples_per_s = (self.examples - window["examples"]) / seconds
        tokens_per_s = (self.tokens - window["tokens"]) / seconds
        mean_loss = window["loss"] / window["finite"] if window["finite"] else math.nan
        elapsed = now - self._start
        steps_done = global_step - self._start_step
        eta = (self.total_steps - global_step) * elapsed / steps_done if steps_done else math.nan
        logger.info("step %d/%d (epoch %d), task %s, loss %.4f (mean of the last %d steps %.4f), "
                    "%.1f examples/s, %s real tokens/s, %s elapsed, ETA %s", global_step, self.total_steps,
                    epoch, task, loss, window["steps"], mean_loss, examples_per_s, f"{tokens_per_s:,.0f}",
                    cli.format_duration(elapsed), cli.format_duration(eta))
        if self.tensorboard is not None:
            for name, value in (("train/loss", mean_loss), ("train/learning_rate", learning_rate()),
                                ("train/examples_per_second", examples_per_s),
                                ("train/real_tokens_per_second", tokens_per_s)):
                self.tensorboard.add_scalar(name, value, global_step)
        self._window = self._new_window()

    def evaluation(self, result: Mapping[str, Any], train_losses: Mapping[str, float | None],
                   global_step: int) -> None:
        """An evaluation's metrics (and each task's mean training loss) in TensorBoard."""
        if self.tensorboard is None:
            return
        self.tensorboard.add_scalar("eval/glue_average", result["glue_average"], global_step)
        for record in result["records"]:  # every metric, the task's score (and original_metric)
            for name, value in record.items():
                if name not in ("epoch", "global_step", "task", "split", "train_loss") and value is not None:
                    self.tensorboard.add_scalar(f"eval/{record['task']}/{name}", value, global_step)
        for name, loss in train_losses.items():
            if loss is not None:
                self.tensorboard.add_scalar(f"train/epoch_loss/{name}", loss, global_step)

    def finish(self, global_step: int, epochs: int, best: Mapping[str, Any],
               last_losses: Mapping[str, float | None], skipped_steps: int, kept_last_checkpoint: bool) -> None:
        """The closing summary: steps, examples and real tokens with their rates, the
        best model, the last epoch's training loss per task, the output folder's size."""
        if not self.enabled:
            return
        elapsed = time.monotonic() - self._start
        seconds = max(elapsed, 1e-9)
        steps = global_step - self._start_step
        logger.info("training finished: step %d of %d after %d epochs; this session: %d steps, %d examples, "
                    "%s real tokens in %s (%.2f steps/s, %.1f examples/s, %s real tokens/s)", global_step,
                    self.total_steps, epochs, steps, self.examples, f"{self.tokens:,}",
                    cli.format_duration(elapsed), steps / seconds, self.examples / seconds,
                    f"{self.tokens / seconds:,.0f}")
        if best:
            logger.info("best model: epoch %s (step %s), GLUE average %.4f; %s", best["epoch"], best["global_step"],
                        best["glue_average"], ", ".join(f"{k} {v:.4f}" for k, v in best["scores"].items()))
        logger.info("mean training loss per task in the last epoch: %s",
                    ", ".join(f"{n} {v:.4f}" if v is not None else f"{n} -" for n, v in last_losses.items()))
        if skipped_steps:
            logger.info("%d step(s) with a non-finite loss were skipped", skipped_steps)
        kept = ("checkpoints/last.pt kept (--keep_last_checkpoint)" if kept_last_checkpoint
                else "checkpoints/last.pt removed (--keep_last_checkpoint keeps it)")
        output_dir = self.settings.output_dir
        logger.info("outputs in %s: %s in all; %s", output_dir,
                    format_size(checkpointing.folder_size(output_dir)), kept)


def format_size(size: int) -> str:
    """Bytes in the unit a person reads: 812 KB, 94.1 MB, 2.47 GB (powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}" if size < 100 * scale else f"{size / scale:.0f} {unit}"
    return f"{size} bytes"


def tensorboard_summary_writer():
    """``torch.utils.tensorboard.SummaryWriter``, or a UsageError saying how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise UsageError(f"--logging_dir writes TensorBoard event files, which needs the tensorboard package "
                         f"(pip install tensorboard): {err}") from None
    return SummaryWriter
