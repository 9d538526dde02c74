"""benchmarks/diagnose_learning.py: its figures are the formulas they claim to be.

Sections 1 and 2 on the real MiniLM weights and the demo data, two tasks (CoLA, a
classification, and STS-B, the regression): the pooled output's RMS is that of
tanh(W h_[CLS] + b) with W and b read straight from MiniLM's safetensors file; the head's
weight std, the logits' std and the initial loss are recomputed from the head's raw
tensors; the expected draws are steps x N_i^alpha / sum_j N_j^alpha with the paper's
alphas (anneal: 1 - 0.8 e / (E - 1)); the run's draws are the original's
``np.random.seed(seed); np.random.choice(n, p=probs)`` sequence; the learning rate at each
draw is BERTAdam's warmup_linear of the parameter's own counter, written out here.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import diagnose_learning as dl  # noqa: E402

import demo_data  # noqa: E402
import modeling  # noqa: E402
import tokenization  # noqa: E402
import training  # noqa: E402

TASKS = ["cola", "sts"]
SEED = 0
BATCH = 8


@pytest.fixture(scope="module")
def demo_sizes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_glue")
    return folder, demo_data.write_demo_glue(folder, seed=0)


@pytest.fixture(scope="module")
def setup(demo_sizes, minilm_dir, repo_root):
    folder, _ = demo_sizes
    tokenizer = tokenization.FullTokenizer(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    tasks = training.load_task_data(folder, TASKS, tokenizer, 64, with_train=True, with_dev=False)
    training.set_seed(SEED)
    config = modeling.BertConfig.from_json_file(repo_root / "configs" / "minilm_pals_config.json")
    model = training.build_model(config, TASKS, str(minilm_dir), freeze=False)
    return model, tasks


def test_initial_scales_are_the_pooler_output_and_head_on_raw_tensors(setup, minilm_dir):
    model, tasks = setup
    rows = dl.initial_scales(model, tasks, BATCH, SEED)
    raw = load_file(str(minilm_dir / "model.safetensors"))
    weight, bias = raw["pooler.dense.weight"].double(), raw["pooler.dense.bias"].double()
    assert abs(weight.std().item() - 0.009) < 0.001 and bias.abs().max().item() == 0  # MiniLM's untrained pooler
    model.eval()
    for task, row in zip(tasks, rows):
        batch = dl.first_batch(task, BATCH, SEED)
        with torch.no_grad():
            layers, _ = model.bert(batch["input_ids"], batch["segment_ids"], batch["input_mask"], task.task_id)
        pooled = torch.tanh(layers[-1][:, 0].double() @ weight.T + bias)
        assert row["pooled_rms"] == pytest.approx(math.sqrt(pooled.pow(2).mean().item()), rel=1e-5)
        head_w = model.classifier[task.task_id].weight.detach().double()
        head_b = model.classifier[task.task_id].bias.detach().double()
        logits = pooled @ head_w.T + head_b
        assert row["head_std"] == pytest.approx(head_w.std().item(), rel=1e-6)
        assert row["logits_std"] == pytest.approx(logits.std().item(), rel=1e-4)
        labels = batch["label_ids"]
        if task.spec.is_regression:
            loss = (logits[:, 0] - labels.double()).pow(2).mean()
        else:
            loss = -(logits - logits.logsumexp(-1, keepdim=True)).gather(1, labels.view(-1, 1)).mean()
        assert row["loss"] == pytest.approx(loss.item(), rel=1e-4)
        # Every group received a gradient, and the head's and pooler's are not rounding noise.
        assert all(row[f"grad_{g}"] > 0 for g in dl.GROUPS) and row["grad_head"] > 1e-3, row


def test_expected_and_drawn_steps_and_learning_rates(demo_sizes):
    _, all_sizes = demo_sizes
    names = ["cola", "mrpc", "rte", "sts", "qqp"]
    sizes = [all_sizes[name] for name in names]
    steps, epochs, lr, warmup = 100, 3, 5e-5, 0.1
    expected = dl.expected_steps(sizes, steps, epochs)
    n = np.array(sizes, dtype=np.float64)
    for method in ("prop", "sqrt", "anneal", "uniform", "rr"):
        for epoch in range(epochs):
            alpha = {"prop": 1.0, "sqrt": 0.5, "anneal": 1 - 0.8 * epoch / (epochs - 1)}.get(method, 0.0)
            np.testing.assert_allclose(expected[method][epoch], steps * n ** alpha / (n ** alpha).sum(), rtol=1e-12)
    for skip in (False, True):
        rows = dl.draw_schedule(sizes, "anneal", steps, epochs, seed=3, lr=lr, warmup=warmup, skip_unsampled=skip)
        # The original's draws: one RandomState, one choice per step, the epoch's probabilities.
        rng = np.random.RandomState(3)
        drawn = [[] for _ in sizes]
        for epoch in range(epochs):
            alpha = 1 - 0.8 * epoch / (epochs - 1)
            for step in range(steps):
                drawn[rng.choice(len(sizes), p=n ** alpha / (n ** alpha).sum())].append(epoch * steps + step)
        for task_steps, row in zip(drawn, rows):
            assert row["steps"] == task_steps
            assert row["per_epoch"] == [sum(s // steps == e for s in task_steps) for e in range(epochs)]
            assert row["first"] == task_steps[0] + 1
            for k, s in enumerate(task_steps):
                x = (k if skip else s - task_steps[0]) / (steps * epochs)  # the parameter's own counter
                assert row["lrs"][k] == pytest.approx(lr * (x / warmup if x < warmup else 1 - x), rel=1e-12)
            assert row["lrs"][0] == 0.0  # a parameter's first update is at schedule position 0
    assert dl.prior_loss(np.array([0, 0, 0, 1]), False) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert dl.prior_loss(np.array([0.2, 0.4, 0.9]), True) == pytest.approx(np.mean((np.array([0.2, 0.4, 0.9]) - 0.5) ** 2))


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path, capsys):
    assert dl.main(["--run_dir", str(tmp_path), "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'metrics.jsonl'}: not found (--run_dir must be an output folder of "
                   f"run_multi_task.py or demo.py)"], err
