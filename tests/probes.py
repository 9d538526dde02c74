"""Hooks into the training loop from the tests (no production code knows of them).

``TrainerProbe(monkeypatch)`` wraps ``training.Trainer.train_step`` and ``train`` for
the rest of the test: it keeps every step's task and loss, the model's state dict just
before the first step, the trainer itself, and the state dict when training ends (so
the tests do not depend on which checkpoint files a run leaves behind).
"""
from __future__ import annotations

import signal

import torch

import training


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: tensor.detach().clone() for key, tensor in model.state_dict().items()}


class TrainerProbe:
    def __init__(self, monkeypatch, stop_after_step: int | None = None):
        """``stop_after_step``: after that global step, the trainer is asked to stop as a
        SIGTERM would (it saves a resumable checkpoint and the run exits 143)."""
        self.steps: list[tuple[str, float]] = []  # (task name, loss) per optimizer step
        self.initial: dict[str, torch.Tensor] | None = None
        self.final: dict[str, torch.Tensor] | None = None
        self.trainer: training.Trainer | None = None
        self.stop_after_step = stop_after_step
        train_step, train = training.Trainer.train_step, training.Trainer.train
        probe = self

        def probed_train_step(trainer, task_id):
            if probe.trainer is not trainer:
                probe.trainer = trainer
                probe.initial = snapshot(trainer.model)
            loss = train_step(trainer, task_id)
            probe.steps.append((trainer.task_names[task_id], loss))
            if probe.stop_after_step is not None and trainer.global_step + 1 == probe.stop_after_step:
                trainer._stop_signal = signal.SIGTERM
            return loss

        def probed_train(trainer):
            result = train(trainer)
            probe.final = snapshot(trainer.model)
            return result

        monkeypatch.setattr(training.Trainer, "train_step", probed_train_step)
        monkeypatch.setattr(training.Trainer, "train", probed_train)

    def reset(self, stop_after_step: int | None = None) -> None:
        """Forget the last run (for the next run in the same test)."""
        self.steps, self.initial, self.final, self.trainer = [], None, None, None
        self.stop_after_step = stop_after_step

    def losses(self, task: str | None = None) -> list[float]:
        return [loss for name, loss in self.steps if task is None or name == task]
