"""What the port changes so that short multi-task runs learn every task (issue 19):
Adam's bias correction, a learning rate of its own for adapters and heads, regression
heads that start at the mean label with their MSE scaled by 1 / the label variance, and
task parameters that move only on the steps that draw their task. Each is on by default,
off under --replicate_original, and off with its own flag.

Expected values are written here from the raw data (the STS-B scores read from the TSV
with the csv module) and from parameter names, not from the code under test.
"""
from __future__ import annotations

import csv
import statistics

import pytest
import torch

import demo_data
import run_multi_task
import tokenization
import training
from modeling import BertConfig

TINY = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=64, type_vocab_size=2, hidden_size_aug=12, pals=True, mult=True)


def settings_for(tmp_path, *flags):
    (tmp_path / "c").write_text("{}")
    (tmp_path / "v").write_text("[PAD]\n")
    args = run_multi_task.build_parser().parse_args(
        ["--data_dir", ".", "--bert_config_file", str(tmp_path / "c"), "--vocab_file", str(tmp_path / "v"),
         "--output_dir", "o", *flags])
    return run_multi_task.settings_from_args(args, tmp_path, 2)


def test_defaults_and_the_original(tmp_path):
    default = settings_for(tmp_path)
    assert (default.bias_correction, default.task_learning_rate, default.scale_regression,
            default.skip_unsampled_updates) == (True, 1e-3, True, True)
    original = settings_for(tmp_path, "--replicate_original")
    assert (original.bias_correction, original.task_learning_rate, original.scale_regression,
            original.skip_unsampled_updates) == (False, None, False, False)
    assert settings_for(tmp_path, "--update_unsampled").skip_unsampled_updates is False
    assert settings_for(tmp_path, "--no_bias_correction").bias_correction is False
    assert settings_for(tmp_path, "--no_scale_regression").scale_regression is False
    assert settings_for(tmp_path, "--task_learning_rate", "0").task_learning_rate is None
    assert settings_for(tmp_path, "--task_learning_rate", "3e-4").task_learning_rate == 3e-4


@pytest.mark.parametrize("task_lr", [None, 1e-3])
def test_adapters_and_heads_get_the_task_learning_rate(task_lr):
    model = training.BertForMultiTask(TINY.replace(num_tasks=2), [2, 1])
    [optimizer] = training.build_optimizers(model, 5e-5, 0.1, 100, split_attention=False, task_learning_rate=task_lr)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    # The task's own parameters, by the original's key names: PALs (multi_layers), the
    # tied projections (mult_aug_dense*), the heads (classifier).
    own = ("classifier.", "multi_layers.", "mult_aug_dense")
    seen = set()
    for name, param in model.named_parameters():
        is_own = any(marker in name for marker in own)
        seen.add(is_own)
        assert lr_of[id(param)] == (task_lr if is_own and task_lr else 5e-5), name
    assert seen == {True, False}


@pytest.fixture(scope="module")
def demo_glue(tmp_path_factory):
    folder = tmp_path_factory.mktemp("glue")
    demo_data.write_demo_glue(folder, seed=0)
    return folder


def sts_training_labels(folder) -> list[float]:
    """STS-B's training scores on the 0-1 scale the model trains on (score / 5)."""
    with open(folder / "STS-B" / "train.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [float(row[-1]) / 5 for row in rows[1:]]


@pytest.mark.parametrize("scale", [True, False])
def test_regression_head_starts_at_the_mean_label(demo_glue, vocab_file, tmp_path, scale):
    training.set_seed(0)
    tokenizer = tokenization.FullTokenizer(str(vocab_file), do_lower_case=True)
    tasks = training.load_task_data(demo_glue, ["sst", "sts"], tokenizer, 64, with_train=True, with_dev=False)
    model = training.build_model(TINY, ["sst", "sts"], None, freeze=False)
    head_before = model.classifier[0].bias.detach().clone()
    settings = training.TrainingSettings(
        output_dir=tmp_path, vocab_file=str(vocab_file), train_batch_size=8, eval_batch_size=8,
        gradient_accumulation_steps=1, num_train_epochs=1, steps_per_epoch=2, learning_rate=5e-5,
        warmup_proportion=0.1, sample="rr", seed=0, max_seq_length=64, scale_regression=scale)
    trainer = training.Trainer(model, tasks, settings, training.DistributedContext(torch.device("cpu")))
    labels = sts_training_labels(demo_glue)
    if scale:
        assert model.classifier[1].bias.item() == pytest.approx(statistics.fmean(labels), rel=1e-6)
        assert trainer.loss_scales == pytest.approx([1.0, 1.0 / statistics.pvariance(labels)], rel=1e-6)
    else:
        assert model.classifier[1].bias.item() == 0.0
        assert trainer.loss_scales == [1.0, 1.0]
    assert torch.equal(model.classifier[0].bias, head_before)  # a classification head is left alone
