"""Training learns, for every architecture, through run_multi_task.py.

The other end-to-end tests compare runs with each other (resume against uninterrupted, two
ranks against one): a loop that never changed the weights would pass them. These check
that the weights move the right way:

- a short PALs run (make demo's data, flags and MiniLM weights, but 600 steps instead of
  1,200, another seed) learns every task: each classification task's dev score beats its
  majority baseline by 0.05, CoLA's MCC reaches 0.3 and STS-B's score 0.5 (issue 19;
  benchmarks/demo_seeds.py runs the demo itself on six seeds);
- every architecture config in configs/ at MiniLM size trains 20 steps with a falling
  training loss (below 0.95x its start), saves, and a run resumed from its checkpoint of
  step 15 ends with exactly its weights and metrics; it is rebuilt from its adapter files
  with identical outputs;
- by default only the drawn task's own parameters (and the shared ones) change at a
  step; with --update_unsampled a task's parameters keep moving after their first use
  (the original's behaviour).

"The training loss" is measured on a fixed sample of training examples (64 per task) in
eval mode, before the first step and after the last (tests/probes.py), so that dropout
and which batches were drawn do not blur it. Runs happen in this process, so resumed and
uninterrupted runs use the same thread count and can agree bit for bit.

MiniLM's pooler weights are small (std 0.009): its pooled output and the heads start near
zero. The 20-step runs start from the short run's shared BERT, whose pooler has learned (as
BERT's own pooler, trained on next-sentence prediction, has); their adapters and heads
start fresh. From the MiniLM weights directly, 30 steps moved the loss by under 1%, in
either direction for the modules on top.

What these cannot see: how well the paper's settings learn on real GLUE (hours of
training); whether a resumed run equals an uninterrupted one across processes with other
thread counts (tests/test_run_multi_task.py runs that with one thread each).
"""
from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_config
from probes import TrainerProbe, snapshot
from sklearn.metrics import accuracy_score, f1_score

import checkpointing
import demo
import demo_data
import glue
import modeling
import run_multi_task
import tokenization
import training

SAMPLE = 32  # training examples per task for the fixed-sample loss
SEQ = 64


@pytest.fixture(scope="module")
def glue_dir(make_glue_dir):
    return make_glue_dir(seed=0, scale=0.5)


@pytest.fixture(scope="module")
def tokenizer(vocab_file):
    return tokenization.FullTokenizer(str(vocab_file), do_lower_case=True)


def training_sample(glue_dir, tokenizer, tasks):
    return {task: training.featurise(glue_dir, task, "train", tokenizer, SEQ)[:SAMPLE] for task in tasks}


def sample_losses(model, state, sample) -> list[float]:
    """Each task's mean loss over its fixed training sample (tasks in model order), eval
    mode, with the weights ``state`` loaded into ``model``."""
    model.load_state_dict(state)
    model.eval()
    losses = []
    with torch.no_grad():
        for task_id, task in enumerate(sample):
            batch = glue.collate_features(sample[task], regression=glue.TASKS[task].is_regression)
            loss, _ = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"], task_id,
                            labels=batch["label_ids"])
            losses.append(loss.item())
    return losses


def minilm_args(glue_dir, minilm_dir, config_file, output_dir, tasks, *extra):
    """The run's arguments; a later --init_checkpoint in ``extra`` replaces the MiniLM weights."""
    return [str(a) for a in [
        "--data_dir", glue_dir, "--bert_config_file", config_file, "--vocab_file", minilm_dir / "vocab.txt",
        "--init_checkpoint", minilm_dir, "--output_dir", output_dir, "--tasks", ",".join(tasks), "--do_lower_case",
        "--max_seq_length", SEQ, "--do_train", "--sample", "rr", "--num_train_epochs", "1", "--eval_batch_size", "64",
        "--seed", "1", "--no_plot", "--save_checkpoints_steps", "0", *extra]]


# ---------------------------------------------------------------------------------------
# A short PALs run on the demo's data learns every task
# ---------------------------------------------------------------------------------------

DEMO_SEED = 7  # neither the demo's own (42) nor one of benchmarks/demo_seeds.py's
# The smallest budget seen to be reliable: 3 epochs of 200 steps instead of the demo's 4 of
# 300 (600 steps of 16; 380-420 s at one thread). On seeds 1, 2 and 4 every task cleared this
# test's bar, the tightest RTE by 0.08 (its majority 0.58) and MRPC by 0.12; CoLA's MCC was
# 0.51-0.64, the GLUE average 0.80-0.83. After 300 steps CoLA is often still at MCC 0.
DEMO_EPOCHS, DEMO_STEPS_PER_EPOCH = 3, 200
# Above the majority baseline by half the demo's margin (demo.MARGIN_OVER_MAJORITY, 0.10):
# the short run's RTE cleared its baseline by 0.08 on one seed; a task never drawn or a
# broken head stays at its baseline (0.00).
LEARNED_MARGIN = 0.05
# (folder, dev file, label column, header row) of each dev set, as GLUE lays them out
DEV_LAYOUT = {"cola": ("CoLA", "dev.tsv", 1, False), "mrpc": ("MRPC", "dev.tsv", 0, True),
              "mnli": ("MNLI", "dev_matched.tsv", -1, True), "mnli-mm": ("MNLI", "dev_mismatched.tsv", -1, True),
              "rte": ("RTE", "dev.tsv", -1, True), "sst": ("SST-2", "dev.tsv", -1, True),
              "qqp": ("QQP", "dev.tsv", 5, True), "qnli": ("QNLI", "dev.tsv", -1, True)}


def tsv_labels(path, column, header):
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[1:] if header else rows
    return [row[column] for row in rows if len(row) == len(rows[0])]  # (the demo's QQP has broken rows)


def majority_baseline(data_dir, key) -> float:
    """The dev score of always predicting the most frequent training label, from the TSVs
    with the csv module and scikit-learn (not the code under test)."""
    folder, dev_file, column, header = DEV_LAYOUT[key]
    train = tsv_labels(data_dir / folder / "train.tsv", column, header)
    gold = tsv_labels(data_dir / folder / dev_file, column, header)
    predicted = [Counter(train).most_common(1)[0][0]] * len(gold)
    accuracy = accuracy_score(gold, predicted)
    if key in ("mrpc", "qqp"):  # GLUE's score: the mean of accuracy and F1 of class "1"
        return (accuracy + f1_score(gold, predicted, pos_label="1", zero_division=0)) / 2
    return accuracy


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, minilm_dir):
    """make demo's training (demo.TRAINING_FLAGS, demo.CONFIG, the same generated data)
    with 3 epochs of 200 steps and another seed; (data folder, output folder)."""
    data_dir = tmp_path_factory.mktemp("demo_data")
    demo_data.write_demo_glue(data_dir, seed=0)
    out = tmp_path_factory.mktemp("short_run") / "out"
    flags = [flag for flag in demo.TRAINING_FLAGS if flag != "--do_predict"]
    assert run_multi_task.main([
        "--data_dir", str(data_dir), "--bert_config_file", str(demo.CONFIG),
        "--vocab_file", str(minilm_dir / "vocab.txt"), "--init_checkpoint", str(minilm_dir),
        "--output_dir", str(out), *flags, "--steps_per_epoch", str(DEMO_STEPS_PER_EPOCH),  # (the last value wins)
        "--num_train_epochs", str(DEMO_EPOCHS),
        "--seed", str(DEMO_SEED), "--no_plot", "--no_save_adapters"]) == 0
    return data_dir, out


@pytest.mark.slow
def test_a_short_pals_run_learns_every_task(short_run):
    """Every classification task beats its majority baseline by LEARNED_MARGIN, CoLA's MCC
    and STS-B's score reach the demo's minimums, the GLUE average 0.75. Checked by breaking
    the code: with RTE never drawn it fails (RTE 0.46, its majority 0.58). Heads that start
    at std 1 instead of 0.02 still learned every task in 600 steps (GLUE 0.81): Adam's steps
    do not depend on the scale, so that is no failure this test could see."""
    data_dir, out = short_run
    best = json.loads((out / "eval_results.json").read_text())
    scores = best["scores"]
    assert sorted(scores) == sorted([*DEV_LAYOUT, "sts"])
    needed = {key: majority_baseline(data_dir, key) + LEARNED_MARGIN for key in DEV_LAYOUT}
    needed.update(cola=0.30, sts=0.50)
    missed = {key: (round(scores[key], 3), round(needed[key], 3)) for key in needed if scores[key] < needed[key]}
    assert not missed, f"tasks below what learning needs (score, needed): {missed}"
    assert best["glue_average"] >= 0.75, best["glue_average"]


# ---------------------------------------------------------------------------------------
# Every architecture: trains, saves, resumes, rebuilds from its adapter files
# ---------------------------------------------------------------------------------------

ARCHITECTURE_TASKS = ["sst", "mnli"]
STEPS, STOP_AT = 20, 15
# Every MiniLM-size config file in configs/ (a new one is trained here without being listed).
ARCHITECTURE_CONFIGS = sorted(path.name for path in (Path(__file__).resolve().parent.parent / "configs")
                              .glob("minilm_*.json"))
FALL = 0.95  # the training loss after 20 steps is below this fraction of its start (0.45-0.67 seen)


@pytest.fixture(scope="module")
def shared_bert(short_run, tmp_path_factory) -> Path:
    """The short run's shared BERT alone (its pooler has learned): best_model.pth also
    holds that run's heads, which --init_checkpoint would load."""
    path = tmp_path_factory.mktemp("shared_bert") / "shared_bert.pt"
    trained = torch.load(short_run[1] / checkpointing.BEST_MODEL_FILE, weights_only=True)
    torch.save({key: tensor for key, tensor in trained.items() if modeling.task_of_key(key) is None}, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ARCHITECTURE_CONFIGS)
def test_architecture_trains_saves_resumes_and_rebuilds(config_name, shared_bert, tmp_path, glue_dir, minilm_dir,
                                                        tokenizer, repo_root, monkeypatch):
    config_file = repo_root / "configs" / config_name
    tasks = ARCHITECTURE_TASKS
    # From the short run's shared BERT (adapters and heads start fresh), with another seed
    # than that run's: with the same one, PALs would start from the very head weights that
    # run trained its BERT against. The modules on top need the standard LayerNorm init to
    # learn in a short run. 30 steps of a fresh BERT layer on top were sensitive to the
    # batch order (from an earlier run's BERT: seed 2 left its loss at 1.00x the start,
    # seed 3 brought it to 0.79x); 20 steps from a demo run's BERT: 0.45x.
    common = ["--steps_per_epoch", STEPS, "--train_batch_size", "8", "--learning_rate", "1e-4", "--seed", "3",
              "--layer_norm_init", "standard", "--init_checkpoint", shared_bert, "--save_checkpoints_steps", STOP_AT]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    probe = TrainerProbe(monkeypatch)
    train_step = training.Trainer.train_step

    def keep_the_halfway_checkpoint(trainer, task_id):
        if trainer.settings.output_dir == full and trainer.global_step == STOP_AT:  # written after step 15
            (resumed / checkpointing.TRAINING_CHECKPOINT_DIR).mkdir(parents=True)
            shutil.copy(checkpointing.training_checkpoint_path(full), checkpointing.training_checkpoint_path(resumed))
        return train_step(trainer, task_id)

    monkeypatch.setattr(training.Trainer, "train_step", keep_the_halfway_checkpoint)

    # 1. 20 steps: the training loss falls; the best model and the adapter files are saved.
    assert run_multi_task.main(minilm_args(glue_dir, minilm_dir, config_file, full, tasks, *common)) == 0
    initial, final = probe.initial, probe.final
    model = modeling.BertForMultiTask(modeling.BertConfig.from_json_file(full / "config.json"),
                                      [glue.TASKS[t].num_labels for t in tasks])
    sample = training_sample(glue_dir, tokenizer, tasks)
    before, after = sum(sample_losses(model, initial, sample)), sum(sample_losses(model, final, sample))
    assert after < FALL * before, (before, after)
    saved = torch.load(full / "best_model.pth", weights_only=True)
    assert set(saved) == set(final) and all(torch.equal(saved[k], final[k]) for k in final)

    # 2. Resumed from the checkpoint written after step 15: the same weights and metrics.
    probe.reset()
    args = minilm_args(glue_dir, minilm_dir, config_file, resumed, tasks, *common, "--no_save_adapters", "--resume")
    assert run_multi_task.main(args) == 0
    assert probe.trainer.global_step == STEPS and len(probe.steps) == STEPS - STOP_AT
    assert all(torch.equal(probe.final[k], final[k]) for k in final), "the resumed run ended elsewhere"
    assert (resumed / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()

    # 3. Rebuilt from the shared BERT and the task files (in the other order): the same outputs.
    adapters = full / checkpointing.ADAPTER_DIR
    rebuilt, names = checkpointing.build_model_from_adapters(
        full / checkpointing.BEST_MODEL_FILE, [adapters / f"{t}.safetensors" for t in reversed(tasks)])
    assert names == list(reversed(tasks))
    model.load_state_dict(saved)
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        for task_id, task in enumerate(tasks):
            dev = training.featurise(glue_dir, task, glue.TASKS[task].dev_splits[0], tokenizer, SEQ)[:32]
            batch = glue.collate_features(dev)
            expected = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"], task_id)
            got = rebuilt(batch["input_ids"], batch["segment_ids"], batch["input_mask"], names.index(task))
            assert torch.equal(expected, got), task


# ---------------------------------------------------------------------------------------
# A step changes only the drawn task's own parameters (unless --update_unsampled)
# ---------------------------------------------------------------------------------------

SMALL_ARCHITECTURES = {
    "pals": {"mult": True, "pals": True, "hidden_size_aug": 12},
    "low_rank": {"mult": True, "hidden_size_aug": 8},
    "houlsby_plus_pals": {"houlsby": True, "pals": True, "hidden_size_aug": 12, "extra_dim": 8},
    "top_attention": {"top": True, "hidden_size_aug": 24},
    "top_bert_layer": {"top": True, "bert_lay_top": True},
    "lhuc_low_rank": {"lhuc": True, "mult": True, "hidden_size_aug": 8},
}


def small_config(path, **flags):
    """The tiny model with only the architecture ``flags`` ask for (no PALs by default)."""
    return write_tiny_config(path, 30522, **{"mult": False, "pals": False, **flags})


def record_each_step(monkeypatch) -> list:
    """(drawn task id, parameters before, parameters after) of every optimizer step."""
    steps = []
    train_step = training.Trainer.train_step

    def recording(trainer, task_id):
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        loss = train_step(trainer, task_id)
        steps.append((task_id, before, snapshot(trainer.model)))
        return loss

    monkeypatch.setattr(training.Trainer, "train_step", recording)
    return steps


@pytest.mark.parametrize("name", list(SMALL_ARCHITECTURES))
def test_a_step_changes_only_the_drawn_tasks_parameters(name, tmp_path, vocab_file, monkeypatch,
                                                                      make_glue_dir):
    glue_dir = make_glue_dir(seed=1, scale=0.1)
    config = small_config(tmp_path / "config.json", **SMALL_ARCHITECTURES[name])
    moved_while_not_drawn = {}
    for skip in (True, False):
        steps = record_each_step(monkeypatch)
        args = [str(a) for a in [
            "--data_dir", glue_dir, "--bert_config_file", config, "--vocab_file", vocab_file,
            "--output_dir", tmp_path / f"run_{skip}", "--tasks", "cola,sts,mnli", "--do_lower_case",
            "--max_seq_length", "32", "--train_batch_size", "4", "--seed", "2", "--no_plot", "--do_train",
            "--sample", "rr", "--num_train_epochs", "1", "--steps_per_epoch", "6", "--learning_rate", "1e-3",
            "--warmup_proportion", "0",  # (with warm-up, every parameter's first update has learning rate 0)
            "--layer_norm_init", "standard", "--no_save_adapters", "--save_checkpoints_steps", "0",
            *([] if skip else ["--update_unsampled"])]]
        assert run_multi_task.main(args) == 0
        assert [task for task, _, _ in steps] == [0, 1, 2, 0, 1, 2]
        moved_while_not_drawn[skip] = set()
        for drawn, before, after in steps:
            for key, value in before.items():
                owner = modeling.task_of_key(key)
                changed = not torch.equal(value, after[key])
                if owner is None or owner == drawn:
                    assert changed, f"{name}: {key} did not change at a step of task {drawn}"
                elif changed:
                    moved_while_not_drawn[skip].add(key)
        monkeypatch.undo()
    assert not moved_while_not_drawn[True], f"{name}: moved on another task's step: {sorted(moved_while_not_drawn[True])[:3]}"
    # --update_unsampled (the original's in-place zero_grad): momentum keeps used tasks moving.
    assert moved_while_not_drawn[False]
