"""The gradient of a training step, as BERTAdam receives it, is the same however the
step's examples are laid out: one process with batch 8, one process with 2 accumulation
steps of 4, two gloo processes with 4 each, two processes with 2 accumulation steps each,
and DataParallel's per-chunk losses; for full batches and for a last batch of odd size (5).
And it is the gradient of the mean loss over the step's examples, written out here on the
model's logits.

Gradients are compared before the optimizer (BERTAdam's m / (sqrt(v) + eps) barely moves
when every gradient is scaled, and its per-tensor clipping hides the rest, so parameters
after a step cannot show a factor of 2). They are captured by wrapping BERTAdam.step
(tests/capture_gradients.py), with learning rate 0 so that every step sees the same
weights and can be compared across layouts, and dropout 0.

The same examples must fall in the same step in every layout, whatever the shuffling:
the runs use --replicate_original, whose batches are the first pass's, replayed in order
(only the batch size decides where they are cut). CoLA has 21 training examples and
STS-B 13 here, so with batch 8 a pass ends with a batch of 5 (split 3 + 2 over two
ranks, 4 + 1 over two accumulation steps).

Tolerance: each tensor within 1e-6 of its norm. Tensors whose gradient is nearly zero
(the attention key biases get rounding noise of 1e-19: softmax ignores them) are
compared with 1e-6 of 1% of the step's largest tensor norm instead. The model runs in
float64 (the loss is still computed in float32, as always): in float32, summing the same
gradient in another order already differs by up to 1.5e-6 on small tensors, so 1e-6
would test the rounding, not the scale. The bugs this is for are factors of 2.

DataParallel: on a machine without a GPU, nn.DataParallel runs the module directly
(no scatter), so it cannot show how the per-GPU losses are combined. The test replaces it
by a CPU stand-in that does what its scatter and gather do to this model's call (inputs
cut by Tensor.chunk along the batch, one loss per chunk stacked, logits concatenated):
what is tested is the trainer's reduction of those losses, not torch's DataParallel.
benchmarks/gpu_check.py runs the real one on a GPU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import conftest
import pytest
import torch
from capture_gradients import recording
from conftest import write_tiny_config
from references import relative_gradient_error
from torch import nn

import glue
import run_multi_task
import training

TOLERANCE = 1e-6
NEAR_ZERO = 0.01  # tensors below 1% of the largest gradient norm: compared at that scale
TRAIN_SIZES = {"cola": 21, "sts": 13}  # batch 8: passes end with a batch of 5
STEPS = 6  # round robin: cola 8, sts 8, cola 8, sts 5, cola 5, sts 8
SEQ = 32


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory, make_glue_dir):
    """The demo data with CoLA's and STS-B's training files cut to TRAIN_SIZES."""
    folder = tmp_path_factory.mktemp("glue")
    shutil.copytree(make_glue_dir(seed=3, scale=0.3), folder, dirs_exist_ok=True)
    for task, size in TRAIN_SIZES.items():
        path = folder / glue.TASKS[task].folder / "train.tsv"
        lines = path.read_text().splitlines()
        header = 0 if task == "cola" else 1  # CoLA's files have no header
        path.write_text("\n".join(lines[:header + size]) + "\n")
        assert len(glue.read_examples(folder, task, "train")) == size
    return folder


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return write_tiny_config(tmp_path_factory.mktemp("config") / "config.json", 30522, dropout=0.0)


def run_args(glue_dir, config_file, vocab_file, output_dir, *extra):
    return conftest.run_args(
        glue_dir, config_file, vocab_file, output_dir, "--do_train", "--replicate_original", "--sample", "rr",
        "--learning_rate", "0", "--num_train_epochs", "1", "--steps_per_epoch", STEPS, "--no_save_adapters",
        "--save_checkpoints_steps", "0", *extra, tasks=",".join(TRAIN_SIZES), seq=SEQ, batch=8, seed=7)


def run_in_process(args, models=None):
    records = []
    with recording(records, models, float64=True):
        assert run_multi_task.main(args) == 0
    assert len(records) == STEPS
    return records


def relative_error(got: dict, want: dict) -> float:
    """The largest per-tensor error (see the module docstring); None gradients must match."""
    return relative_gradient_error(got, want, NEAR_ZERO)


def assert_same_gradients(records, reference, layout):
    for step, (got, want) in enumerate(zip(records, reference)):
        assert got["task"] == want["task"]
        error = relative_error(got["grads"], want["grads"])
        assert error <= TOLERANCE, f"{layout}, step {step + 1} ({len(want['examples'])} examples): {error:.2e}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, glue_dir, config_file, vocab_file):
    """Batch 8 in one process: the reference layout, and the model it trained."""
    models = []
    out = tmp_path_factory.mktemp("one") / "out"
    records = run_in_process(run_args(glue_dir, config_file, vocab_file, out), models)
    sizes = [len(r["examples"]) for r in records]
    assert sizes == [8, 8, 8, 5, 5, 8], sizes  # full batches and an odd last batch for each task
    return records, models[0]


def test_the_gradient_is_that_of_the_mean_loss_over_the_steps_examples(one_process):
    """The mean cross-entropy (or squared error, for STS-B) over the step's examples, written
    out here on the model's logits, differentiated by autograd."""
    records, model = one_process
    names = [name for name, _ in model.named_parameters()]
    for step, record in enumerate(records):
        task = list(TRAIN_SIZES)[record["task"]]
        features = [glue.InputFeatures(list(ids), list(types), label) for ids, types, label in record["examples"]]
        batch = glue.collate_features(features, pad_to=SEQ, regression=task == "sts")
        logits = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"], record["task"]).float()
        labels = batch["label_ids"]
        if task == "sts":
            loss = ((logits[:, 0] - labels.float()) ** 2).mean()
        else:
            loss = -torch.log_softmax(logits, dim=-1)[torch.arange(len(labels)), labels].mean()
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        expected = dict(zip(names, grads))
        # The trainer's gradients are keyed by name; tied tensors appear once in both.
        error = relative_error({n: record["grads"][n] for n in expected}, expected)
        assert error <= TOLERANCE, f"step {step + 1} ({len(features)} examples): {error:.2e}"


def test_two_accumulation_steps_of_4_give_the_gradient_of_batch_8(one_process, tmp_path, glue_dir, config_file,
                                                                 vocab_file):
    reference, _ = one_process
    records = run_in_process(run_args(glue_dir, config_file, vocab_file, tmp_path / "acc",
                                      "--gradient_accumulation_steps", "2"))
    for got, want in zip(records, reference):
        assert sorted(got["examples"]) == sorted(want["examples"])  # the same examples, 4 + 4 (or 4 + 1)
    assert_same_gradients(records, reference, "2 accumulation steps")


def run_two_processes(tmp_path, repo_root, args):
    record_file = tmp_path / "grads"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(repo_root / "tests" / "capture_gradients.py"), str(record_file), "--float64", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo_root, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(f"{record_file}.rank{r}", weights_only=True) for r in range(2)]


@pytest.mark.slow
def test_two_gloo_processes_with_4_each_give_the_gradient_of_batch_8(one_process, tmp_path, glue_dir, config_file,
                                                                    vocab_file, repo_root):
    reference, _ = one_process
    ranks = run_two_processes(tmp_path, repo_root, run_args(glue_dir, config_file, vocab_file, tmp_path / "two"))
    for step, want in enumerate(reference):
        shards = [ranks[r][step]["examples"] for r in range(2)]
        # Each rank trains on its own share: together every example of the batch, once.
        assert sorted(shards[0] + shards[1]) == sorted(want["examples"]), f"step {step + 1}"
        assert [len(s) for s in shards] == [(len(want["examples"]) + 1) // 2, len(want["examples"]) // 2]
    for rank in range(2):  # DDP has averaged: every rank holds the whole step's gradient
        assert_same_gradients(ranks[rank], reference, f"2 processes, rank {rank}")


@pytest.mark.slow
def test_two_processes_with_accumulation_when_a_rank_gets_no_example(one_process, tmp_path, glue_dir,
                                                                     config_file, vocab_file, repo_root):
    """Two processes and two accumulation steps: the last batch of 5 is cut into micro-batches
    of 4 and 1, so in the second one rank 1 has no example (it still runs forward and
    backward, counting 0, or the all-reduce would wait for it forever)."""
    reference, _ = one_process
    ranks = run_two_processes(tmp_path, repo_root, run_args(glue_dir, config_file, vocab_file, tmp_path / "two_acc",
                                                            "--gradient_accumulation_steps", "2"))
    odd = [step for step, want in enumerate(reference) if len(want["examples"]) == 5]
    assert odd and all(len(ranks[1][step]["examples"]) == 2 + 1 for step in odd)  # 2 of 4, then the stand-in
    for rank in range(2):
        assert_same_gradients(ranks[rank], reference, f"2 processes x 2 accumulation steps, rank {rank}")


class ChunkingDataParallel(nn.Module):
    """What nn.DataParallel over ``replicas`` GPUs does to the trainer's call, on the CPU:
    every tensor argument cut by Tensor.chunk along the batch (as its scatter), the module
    run on each chunk, the per-chunk losses stacked into a vector and the logits
    concatenated (as its gather)."""

    replicas = 2

    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module = module

    def forward(self, *inputs, **kwargs):
        def cut(value):
            return value.chunk(self.replicas) if isinstance(value, torch.Tensor) else None

        count = len(inputs[0].chunk(self.replicas))
        outputs = []
        for index in range(count):
            args = [cut(v)[index] if cut(v) is not None else v for v in inputs]
            kw = {k: cut(v)[index] if cut(v) is not None else v for k, v in kwargs.items()}
            outputs.append(self.module(*args, **kw))
        losses, logits = zip(*outputs)
        return torch.stack(losses), torch.cat(logits)


def test_dataparallel_chunk_losses_give_the_gradient_of_batch_8(one_process, tmp_path, glue_dir, config_file,
                                                                vocab_file, monkeypatch):
    reference, _ = one_process
    setup = training.setup_distributed
    monkeypatch.setattr(training, "setup_distributed",
                        lambda local_rank, no_cuda: training.DistributedContext(
                            device=setup(local_rank, no_cuda).device, n_gpu=ChunkingDataParallel.replicas))
    monkeypatch.setattr(nn, "DataParallel", ChunkingDataParallel)
    records = run_in_process(run_args(glue_dir, config_file, vocab_file, tmp_path / "dp"))
    assert_same_gradients(records, reference, "DataParallel (2 chunks)")
