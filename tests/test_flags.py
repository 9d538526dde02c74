"""Flags that had no test: --bf16 training, --freeze, --optim, and --do_predict for every
task (WNLI and the diagnostic set AX included).

All through run_multi_task.main in this process, on the demo data with a small model from
scratch (random init; the flags' behaviour does not depend on the weights), observed by
tests/probes.py (the model before the first step and after training, the per-step
losses) rather than through checkpoint files.

What these cannot see: --bf16 speed or accuracy at full size (tests/test_kernels.py bounds
bf16 against fp32 on MiniLM; the GPU check covers CUDA), --fp16 (CUDA only:
benchmarks/gpu_check.py).
"""
from __future__ import annotations

import csv
import json
import random

import conftest
import pytest
import torch
from conftest import write_tiny_config
from probes import TrainerProbe

import glue
import modeling
import optimization
import run_multi_task
import tokenization


@pytest.fixture(scope="module")
def glue_dir(make_glue_dir):
    return make_glue_dir(seed=5, scale=0.3)


@pytest.fixture(scope="module")
def easy_glue_dir(tmp_path_factory):
    """SST-2 files whose label is the polarity of one adjective: a model from scratch
    learns it within a few dozen steps (the demo tasks need a pretrained one)."""
    folder = tmp_path_factory.mktemp("easy_glue")
    rng = random.Random(0)
    positive = ["good", "great", "excellent", "wonderful", "lovely", "fine"]
    negative = ["bad", "awful", "terrible", "boring", "dull", "poor"]
    nouns = ["movie", "film", "story", "plot", "music", "cast"]
    (folder / "SST-2").mkdir()
    for split, count in (("train", 200), ("dev", 50)):
        rows = ["sentence\tlabel"]
        for _ in range(count):
            label = rng.random() < 0.5
            rows.append(f"the {rng.choice(nouns)} is {rng.choice(positive if label else negative)}\t{int(label)}")
        (folder / "SST-2" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return folder


def tiny_config(path, dropout=0.1, **flags):
    return write_tiny_config(path, 30522, dropout, **flags)


def run_args(glue_dir, config, vocab_file, output_dir, *extra, tasks="sst,qqp"):
    return conftest.run_args(glue_dir, config, vocab_file, output_dir, "--eval_batch_size", "32", "--do_train",
                             "--sample", "rr", "--save_checkpoints_steps", "0", "--no_save_adapters",
                             "--layer_norm_init", "standard", *extra, tasks=tasks, seq=48, batch=16, seed=3)


def mean(values):
    return sum(values) / len(values)


# ---------------------------------------------------------------------------------------
# --bf16 on the CPU
# ---------------------------------------------------------------------------------------

def test_bf16_training_on_cpu_learns_and_saves_fp32(tmp_path, easy_glue_dir, vocab_file, monkeypatch):
    probe = TrainerProbe(monkeypatch)
    seen_dtypes = set()
    forward = modeling.BERTSelfAttention.forward

    def recording_forward(self, hidden_states, attention_mask):
        output = forward(self, hidden_states, attention_mask)
        if self.training:
            seen_dtypes.add(output.dtype)
        return output

    monkeypatch.setattr(modeling.BERTSelfAttention, "forward", recording_forward)
    out = tmp_path / "bf16"
    config = tiny_config(tmp_path / "config.json")
    assert run_multi_task.main(run_args(easy_glue_dir, config, vocab_file, out, "--bf16", "--num_train_epochs", "1",
                                        "--steps_per_epoch", "80", "--learning_rate", "2e-3", tasks="sst")) == 0
    assert seen_dtypes == {torch.bfloat16}  # the training forward ran under bf16 autocast
    losses = probe.losses()
    quarter = len(losses) // 4
    assert mean(losses[-quarter:]) < 0.5 * mean(losses[:quarter]), losses
    assert json.loads((out / "eval_results.json").read_text())["scores"]["sst"] >= 0.9
    # The saved model is fp32, equals the trained weights, and loads strictly into an fp32 model.
    state = torch.load(out / "best_model.pth", weights_only=True)
    assert {t.dtype for t in state.values()} == {torch.float32}
    assert all(torch.equal(state[k], v) for k, v in probe.final.items())
    model = modeling.BertForMultiTask(modeling.BertConfig.from_json_file(out / "config.json"), [2])
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------
# --freeze
# ---------------------------------------------------------------------------------------

def test_freeze_keeps_exactly_the_frozen_parameters(tmp_path, glue_dir, vocab_file, monkeypatch):
    probe = TrainerProbe(monkeypatch)
    config = tiny_config(tmp_path / "config.json")
    assert run_multi_task.main(run_args(glue_dir, config, vocab_file, tmp_path / "freeze", "--freeze",
                                        "--num_train_epochs", "1", "--steps_per_epoch", "4",
                                        "--learning_rate", "1e-3")) == 0
    model = probe.trainer.model
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    # The original's rule: BERT weights are frozen unless their name marks an adapter,
    # a LayerNorm or a head.
    expected = {name for name, _ in model.named_parameters()
                if name.startswith("bert.") and not any(m in name for m in ("aug", "classifier", "mult", "gamma", "beta"))}
    assert frozen == expected and frozen
    assert any("word_embeddings" in n for n in frozen) and any("attention.self.query" in n for n in frozen)
    for name, _ in model.named_parameters():  # (tied tensors once)
        before, after = probe.initial[name], probe.final[name]
        if name in frozen:
            assert torch.equal(before, after), f"frozen {name} changed"
        else:  # every task was drawn (round robin), so every other parameter moved
            assert not torch.equal(before, after), f"trainable {name} did not change"


# ---------------------------------------------------------------------------------------
# --optim: the PAL attention in its own BERTAdam at 3e-4
# ---------------------------------------------------------------------------------------

NO_DECAY = ("bias", "gamma", "beta")  # the original's groups: no weight decay for these

def test_split_optimizer_groups_and_learning_rates(tmp_path, glue_dir, vocab_file, monkeypatch):
    """The groups, and the first update of every parameter computed from its gradient
    with BERTAdam's formula at the group's learning rate and weight decay."""
    probe = TrainerProbe(monkeypatch)
    first_steps = []  # (optimizer, {name: (param before, clipped-to-be grad)}) at the first optimizer step
    original_step = optimization.BERTAdam.step

    def recording_step(self, closure=None):
        if len(first_steps) < 2:
            names = {id(p): n for n, p in probe.trainer.model.named_parameters()}
            first_steps.append((self, {names[id(p)]: (p.detach().clone(), p.grad.detach().clone())
                                       for group in self.param_groups for p in group["params"]
                                       if p.grad is not None}))
        return original_step(self, closure)

    monkeypatch.setattr(optimization.BERTAdam, "step", recording_step)
    config = tiny_config(tmp_path / "config.json", dropout=0.0)
    lr = 1e-3
    # BERTAdam as the original: one learning rate beside the split's, no bias correction
    assert run_multi_task.main(run_args(glue_dir, config, vocab_file, tmp_path / "optim", "--optim", "split",
                                        "--num_train_epochs", "1", "--steps_per_epoch", "1", "--learning_rate",
                                        str(lr), "--warmup_proportion", "0", "--task_learning_rate", "0",
                                        "--no_bias_correction")) == 0
    model = probe.trainer.model
    optimizers = probe.trainer.optimizers
    assert len(optimizers) == 2
    names = {id(p): n for n, p in model.named_parameters()}

    def group_names(optimizer):
        return [{names[id(p)] for p in group["params"]} for group in optimizer.param_groups]

    everything = set(names.values())
    attention = {n for n in everything if "attn" in n}
    assert attention and all(".multi_layers." in n for n in attention)  # the PALs' attention only
    for optimizer, expected, rate in ((optimizers[0], everything - attention, lr),
                                      (optimizers[1], attention, 3e-4)):
        decay, no_decay = group_names(optimizer)
        assert decay | no_decay == expected and not decay & no_decay
        assert no_decay == {n for n in expected if any(m in n for m in NO_DECAY)}
        assert [g["lr"] for g in optimizer.param_groups] == [rate, rate]
        assert [g["weight_decay_rate"] for g in optimizer.param_groups] == [0.01, 0.0]

    # The first update, parameter by parameter: p - lr (m / (sqrt(v) + e) + wd p), with
    # m = 0.1 g and v = 0.001 g^2 from the gradient clipped to norm 1.
    assert [optimizer for optimizer, _ in first_steps] == optimizers
    after = dict(model.named_parameters())
    checked = 0
    for optimizer, captured in first_steps:
        rate = optimizer.param_groups[0]["lr"]
        for name, (before, grad) in captured.items():
            before, grad = before.double(), grad.double()
            grad = grad * min(1.0, 1.0 / (grad.norm().item() + 1e-6))
            decay = 0.0 if any(m in name for m in NO_DECAY) else 0.01
            update = (0.1 * grad) / ((0.001 * grad * grad).sqrt() + 1e-6) + decay * before
            expected = before - rate * update
            # a step moves most elements by about 3 x rate: 1e-4 x rate separates 1e-3 from 3e-4
            error = (after[name].detach().double() - expected).abs().max().item()
            assert error <= 1e-4 * rate, (name, error / rate)
            checked += 1
    assert all(captured for _, captured in first_steps) and checked > 0


# ---------------------------------------------------------------------------------------
# --do_predict: every task's submission file equals the model's predictions
# ---------------------------------------------------------------------------------------

ALL_TASKS = "cola,mrpc,mnli,rte,sts,sst,qqp,qnli,wnli"
# GLUE's submission files and what each must hold (written out here, not read from glue.py).
SUBMISSIONS = {
    "CoLA.tsv": ("cola", "test"), "MRPC.tsv": ("mrpc", "test"), "MNLI-m.tsv": ("mnli", "test_matched"),
    "MNLI-mm.tsv": ("mnli", "test_mismatched"), "AX.tsv": ("mnli", "diagnostic"), "RTE.tsv": ("rte", "test"),
    "STS-B.tsv": ("sts", "test"), "SST-2.tsv": ("sst", "test"), "QQP.tsv": ("qqp", "test"),
    "QNLI.tsv": ("qnli", "test"), "WNLI.tsv": ("wnli", "test"),
}


def test_do_predict_writes_the_models_predictions_for_every_task(tmp_path, glue_dir, vocab_file):
    """Trained briefly to get a run folder, then given random weights large enough that
    predictions differ from example to example (a barely trained model predicts one
    class everywhere, which would hide a file filled from the wrong split), then
    ``--do_predict --predict_checkpoint`` on that folder."""
    config = tiny_config(tmp_path / "config.json")
    run = tmp_path / "run"
    assert run_multi_task.main(run_args(glue_dir, config, vocab_file, run, "--num_train_epochs", "1",
                                        "--steps_per_epoch", "1", tasks=ALL_TASKS)) == 0
    task_names = ALL_TASKS.split(",")
    model = modeling.BertForMultiTask(modeling.BertConfig.from_json_file(run / "config.json"),
                                      [glue.TASKS[t].num_labels for t in task_names])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # weight matrices N(0, 0.5), LayerNorms at 1 and 0, biases 0
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.fill_(1.0)
            elif name.endswith(("beta", "bias")):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.eval()
    tokenizer = tokenization.FullTokenizer(str(vocab_file), do_lower_case=True)
    # Each classification head's bias centres its logits on its test examples (the column
    # medians), so that predictions vary from example to example whatever the draw.
    for task, split in SUBMISSIONS.values():
        task_id = task_names.index(task)
        if glue.TASKS[task].is_regression:
            continue
        features = glue.convert_examples_to_features(glue.read_examples(glue_dir, task, split), task, tokenizer, 48)
        with torch.no_grad():
            logits = torch.cat([model(torch.tensor([f.input_ids]), torch.tensor([f.segment_ids]),
                                      torch.ones(1, len(f.input_ids), dtype=torch.long), task_id) for f in features])
            model.classifier[task_id].bias.copy_(-logits.median(dim=0).values)
    torch.save(model.state_dict(), run / "best_model.pth")
    out = tmp_path / "predict"
    args = [a for a in run_args(glue_dir, config, vocab_file, out, tasks=ALL_TASKS) if a != "--do_train"]
    assert run_multi_task.main([*args, "--do_predict", "--predict_checkpoint", str(run)]) == 0
    assert sorted(p.name for p in (out / "submission").iterdir()) == sorted(SUBMISSIONS)
    for file_name, (task, split) in SUBMISSIONS.items():
        task_id = task_names.index(task)
        rows = list(csv.reader((out / "submission" / file_name).open(), delimiter="\t"))
        examples = glue.read_examples(glue_dir, task, split)
        assert rows[0] == ["index", "prediction"]
        assert [r[0] for r in rows[1:]] == [str(e.guid) for e in examples], file_name
        assert len({r[1] for r in rows[1:]}) > 1, f"{file_name}: one prediction everywhere"
        features = glue.convert_examples_to_features(examples, task, tokenizer, 48)
        for feature, (_, written_label) in zip(features, rows[1:]):
            ids = torch.tensor([feature.input_ids])
            with torch.no_grad():
                logits = model(ids, torch.tensor([feature.segment_ids]), torch.ones_like(ids), task_id)[0]
            if glue.TASKS[task].is_regression:  # the score on GLUE's 0-5 scale
                assert float(written_label) == pytest.approx(min(max(float(logits[0]) * 5, 0.0), 5.0), abs=6e-4)
                continue
            best = int(logits.argmax())
            if written_label != glue.TASKS[task].labels[best]:
                # only a tie within rounding may go either way (batched vs one by one)
                chosen = glue.TASKS[task].labels.index(written_label)
                assert float(logits[best] - logits[chosen]) < 1e-5, (file_name, feature.input_ids)
