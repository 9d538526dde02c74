"""Run run_multi_task.py and record, at every optimizer step, the gradients as
BERTAdam receives them (before its per-tensor clipping) and the examples each
process trained on. Used by tests/test_gradient_scale.py, in-process or as a script
(one process, or one per rank under torch.distributed.run):

    python tests/capture_gradients.py RECORD_FILE [--float64] run_multi_task.py-arguments...

Each process writes RECORD_FILE with ``.rank<r>`` appended: a list with one entry per
optimizer step, {"task": task id, "grads": {name: tensor or None}, "examples": the
training examples this process used in that step, as (input_ids, segment_ids, label)}.
``--float64`` builds the model in float64, so that comparisons are not limited by
float32 rounding (the loss itself is still computed in float32, as always).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import glue  # noqa: E402
import optimization  # noqa: E402
import run_multi_task  # noqa: E402
import training  # noqa: E402


@contextlib.contextmanager
def recording(records: list, models: list | None = None, float64: bool = False):
    """Patch the trainer, BERTAdam.step and the collation (undone on exit); the trainer's
    model is appended to ``models`` if given."""
    original_build_model = training.build_model
    original_train_step = training.Trainer.train_step
    original_optimizer_step = optimization.BERTAdam.step
    original_collate = glue.collate_features
    current: dict = {}

    def train_step(self, task_id):
        current.update(names={id(p): n for n, p in self.model.named_parameters()}, task=task_id, examples=[])
        if models is not None and not any(model is self.model for model in models):
            models.append(self.model)
        try:
            return original_train_step(self, task_id)
        finally:
            current.clear()

    def optimizer_step(self, closure=None):
        if current:
            grads = {current["names"][id(p)]: None if p.grad is None else p.grad.detach().clone()
                     for group in self.param_groups for p in group["params"]}
            records.append({"task": current["task"], "grads": grads, "examples": list(current["examples"])})
        return original_optimizer_step(self, closure)

    def collate(features, *args, **kwargs):
        if current:
            current["examples"].extend((tuple(f.input_ids), tuple(f.segment_ids), f.label_id) for f in features)
        return original_collate(features, *args, **kwargs)

    def build_model(*args, **kwargs):
        return original_build_model(*args, **kwargs).double()

    training.Trainer.train_step = train_step
    optimization.BERTAdam.step = optimizer_step
    glue.collate_features = collate
    if float64:
        training.build_model = build_model
    try:
        yield records
    finally:
        training.build_model = original_build_model
        training.Trainer.train_step = original_train_step
        optimization.BERTAdam.step = original_optimizer_step
        glue.collate_features = original_collate


def main(argv: list[str]) -> int:
    record_file, args = argv[0], argv[1:]
    float64 = bool(args) and args[0] == "--float64"
    records: list = []
    with recording(records, float64=float64):
        code = run_multi_task.main(args[1:] if float64 else args)
    torch.save(records, f"{record_file}.rank{os.environ.get('RANK', '0')}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
