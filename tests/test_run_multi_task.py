"""run_multi_task.py end to end: outputs, metrics, resume, distributed, adapters, bad input."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from conftest import write_tiny_config

import checkpointing
import glue
import modeling
import run_multi_task
import tokenization
import training

TASKS = "cola,sts,mnli"  # a classifier, the regression task, and a task with two dev splits


def tiny_config(path: Path, dropout: float = 0.1, **flags) -> Path:
    return write_tiny_config(path, 30522, dropout, **flags)


def cli_args(glue_dir, config, vocab_file, output_dir, *extra, tasks=TASKS):
    return conftest.run_args(glue_dir, config, vocab_file, output_dir, "--eval_batch_size", "16",
                             "--keep_last_checkpoint",  # the tests read the final training state from last.pt
                             *extra, tasks=tasks, seq=64, batch=8)


def run_cli(args):
    return run_multi_task.main([str(a) for a in args])


# ---------------------------------------------------------------------------------------
# End to end on the real MiniLM weights
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, glue_dir, minilm_dir, repo_root):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    args = ["--data_dir", glue_dir, "--bert_config_file", repo_root / "configs" / "minilm_pals_config.json",
            "--vocab_file", minilm_dir / "vocab.txt", "--init_checkpoint", minilm_dir,
            "--output_dir", output_dir, "--tasks", TASKS, "--do_lower_case", "--max_seq_length", "64",
            "--do_train", "--do_eval", "--do_predict", "--sample", "anneal", "--num_train_epochs", "2",
            "--steps_per_epoch", "6", "--train_batch_size", "8", "--eval_batch_size", "16",
            "--learning_rate", "1e-4", "--seed", "5"]
    assert run_cli(args) == 0
    return output_dir


def test_run_writes_every_output(trained_run):
    for name in ["best_model.pth", "config.json", "vocab.txt", "tasks.json", "eval_results.json", "metrics.jsonl",
                 "training_curves.png", "train.log", "args.json", "checkpoints/finished.json",
                 "adapters/cola.safetensors", "adapters/sts.safetensors", "adapters/mnli.safetensors"]:
        assert (trained_run / name).is_file(), name
    # A finished run drops its resumable state, and the shared BERT lives in best_model.pth only.
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == ["finished.json"]
    assert sorted(p.name for p in (trained_run / "adapters").iterdir()) == [
        "cola.safetensors", "mnli.safetensors", "sts.safetensors"]
    assert (trained_run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    # one line per task and dev split per evaluation: (cola, sts, mnli, mnli-mm) x 2 epochs
    assert [(r["epoch"], r["task"]) for r in records] == [
        (e, t) for e in (0, 1) for t in ("cola", "sts", "mnli", "mnli-mm")]
    assert {"mcc"} <= set(records[0]) and {"pearson", "spearman"} <= set(records[1])


def test_best_model_folder_is_self_contained(trained_run, minilm_dir):
    config = modeling.BertConfig.from_json_file(trained_run / "config.json")
    tasks = checkpointing.read_tasks_file(trained_run / "tasks.json")
    assert [t["name"] for t in tasks] == ["cola", "sts", "mnli"] and config.num_tasks == 3
    state = torch.load(trained_run / "best_model.pth", weights_only=True)
    model = modeling.BertForMultiTask(config, [t["num_labels"] for t in tasks])
    assert set(state) == set(model.state_dict())  # original keys, no 'module.'
    model.load_state_dict(state, strict=True)
    assert (trained_run / "vocab.txt").read_bytes() == (minilm_dir / "vocab.txt").read_bytes()


def _load_best(run_dir):
    config = modeling.BertConfig.from_json_file(run_dir / "config.json")
    tasks = checkpointing.read_tasks_file(run_dir / "tasks.json")
    model = modeling.BertForMultiTask(config, [t["num_labels"] for t in tasks])
    model.load_state_dict(torch.load(run_dir / "best_model.pth", weights_only=True))
    return model.eval(), [t["name"] for t in tasks]


def _predict_one_by_one(model, task_id, features, regression):
    """Predictions computed the plain way: one example at a time, no padding, no grouping."""
    outputs = []
    with torch.no_grad():
        for feature in features:
            ids = torch.tensor([feature.input_ids])
            logits = model(ids, torch.tensor([feature.segment_ids]), torch.ones_like(ids), task_id)
            outputs.append(float(logits[0, 0]) if regression else int(logits[0].argmax()))
    return np.array(outputs)


def _hand_mcc(preds, labels):
    tp = np.sum((preds == 1) & (labels == 1))
    tn = np.sum((preds == 0) & (labels == 0))
    fp = np.sum((preds == 1) & (labels == 0))
    fn = np.sum((preds == 0) & (labels == 1))
    denominator = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    return 0.0 if denominator == 0 else float(tp * tn - fp * fn) / denominator


def _hand_ranks(values):
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def test_reported_metrics_equal_hand_computed_ones(trained_run, glue_dir, minilm_dir):
    model, task_names = _load_best(trained_run)
    best = json.loads((trained_run / "eval_results.json").read_text())
    tokenizer = tokenization.FullTokenizer(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    for task_id, name in enumerate(task_names):
        for split in glue.TASKS[name].dev_splits:
            features = training.featurise(glue_dir, name, split, tokenizer, 64)
            labels = training.labels_of(features)
            preds = _predict_one_by_one(model, task_id, features, name == "sts")
            reported = best["metrics"][training.score_key(name, split)]
            if name == "cola":
                assert reported["mcc"] == pytest.approx(_hand_mcc(preds, labels), abs=1e-6)
            elif name == "sts":
                clipped = np.clip(preds, 0, 1)
                assert reported["pearson"] == pytest.approx(np.corrcoef(clipped, labels)[0, 1], abs=1e-5)
                spearman = np.corrcoef(_hand_ranks(clipped), _hand_ranks(labels))[0, 1]
                assert reported["spearman"] == pytest.approx(spearman, abs=1e-5)
            else:
                assert reported["acc"] == pytest.approx(np.mean(preds == labels), abs=1e-9)
    scores = best["scores"]
    assert best["glue_average"] == pytest.approx(sum(scores.values()) / len(scores))
    assert set(scores) == {"cola", "sts", "mnli", "mnli-mm"}


def test_submission_files(trained_run, glue_dir):
    folder = trained_run / "submission"
    assert sorted(p.name for p in folder.iterdir()) == ["AX.tsv", "CoLA.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "STS-B.tsv"]
    expectations = {"CoLA.tsv": ("cola", "test", {"0", "1"}),
                    "MNLI-m.tsv": ("mnli", "test_matched", {"entailment", "neutral", "contradiction"}),
                    "MNLI-mm.tsv": ("mnli", "test_mismatched", {"entailment", "neutral", "contradiction"}),
                    "AX.tsv": ("mnli", "diagnostic", {"entailment", "neutral", "contradiction"})}
    for name, (task, split, labels) in expectations.items():
        rows = list(csv.reader((folder / name).open(), delimiter="\t"))
        examples = glue.read_examples(glue_dir, task, split)
        assert rows[0] == ["index", "prediction"]
        assert [r[0] for r in rows[1:]] == [e.guid for e in examples]
        assert {r[1] for r in rows[1:]} <= labels
    scores = [float(r[1]) for r in list(csv.reader((folder / "STS-B.tsv").open(), delimiter="\t"))[1:]]
    assert all(0.0 <= s <= 5.0 for s in scores)


def test_predictions_match_the_model(trained_run, glue_dir, minilm_dir):
    model, _ = _load_best(trained_run)
    tokenizer = tokenization.FullTokenizer(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    examples = glue.read_examples(glue_dir, "cola", "test")
    features = glue.convert_examples_to_features(examples, "cola", tokenizer, 64)
    expected = _predict_one_by_one(model, 0, features, False)
    rows = list(csv.reader((trained_run / "submission" / "CoLA.tsv").open(), delimiter="\t"))[1:]
    assert [int(r[1]) for r in rows] == list(expected)


def test_adapter_checkpoints_rebuild_the_same_model(trained_run, glue_dir, minilm_dir):
    model, _ = _load_best(trained_run)
    adapters = trained_run / "adapters"
    # any subset, in any order: task ids follow the files
    rebuilt, names = checkpointing.build_model_from_adapters(
        trained_run / "best_model.pth", [adapters / "mnli.safetensors", adapters / "cola.safetensors"])
    assert names == ["mnli", "cola"]
    rebuilt.eval()
    tokenizer = tokenization.FullTokenizer(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    features = training.featurise(glue_dir, "mnli", "dev_matched", tokenizer, 64)[:16]
    batch = glue.collate_features(features)
    with torch.no_grad():
        for original_id, rebuilt_id in ((2, 0), (0, 1)):
            expected = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"], original_id)
            got = rebuilt(batch["input_ids"], batch["segment_ids"], batch["input_mask"], rebuilt_id)
            assert torch.equal(expected, got)
    size = (adapters / "cola.safetensors").stat().st_size
    assert size < (trained_run / "best_model.pth").stat().st_size / 20


def test_adapter_checkpoints_through_the_cli(trained_run, glue_dir, minilm_dir, tmp_path):
    adapters = trained_run / "adapters"
    files = ",".join(str(adapters / f"{t}.safetensors") for t in ("cola", "sts", "mnli"))
    args = ["--data_dir", glue_dir, "--bert_config_file", trained_run / "config.json", "--vocab_file",
            minilm_dir / "vocab.txt", "--init_checkpoint", trained_run / "best_model.pth",
            "--adapter_checkpoints", files, "--output_dir", tmp_path / "eval", "--tasks", TASKS,
            "--do_lower_case", "--max_seq_length", "64", "--do_eval", "--eval_batch_size", "16"]
    assert run_cli(args) == 0
    evaluated = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    best = json.loads((trained_run / "eval_results.json").read_text())
    assert evaluated["scores"] == pytest.approx(best["scores"], abs=1e-9)


# ---------------------------------------------------------------------------------------
# Resume: an interrupted and resumed run ends exactly where an uninterrupted one does
# ---------------------------------------------------------------------------------------

def _final_state(output_dir):
    return torch.load(Path(output_dir) / "checkpoints" / "last.pt", weights_only=True)


def _assert_same_parameters(a, b, atol=0.0):
    assert set(a) == set(b)
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            assert torch.allclose(a[key], b[key], atol=atol, rtol=0), (key, (a[key] - b[key]).abs().max())


def test_resume_from_an_epoch_checkpoint_is_exact(tmp_path, glue_dir, vocab_file):
    config = tiny_config(tmp_path / "config.json")  # dropout on: its RNG must be restored too
    common = ["--do_train", "--do_eval", "--sample", "sqrt", "--num_train_epochs", "3", "--steps_per_epoch", "5",
              "--learning_rate", "1e-3", "--keep_epoch_checkpoints", "--no_save_adapters"]
    full = tmp_path / "full"
    assert run_cli(cli_args(glue_dir, config, vocab_file, full, *common)) == 0
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "last.pt").write_bytes((full / "checkpoints" / "epoch_1.pt").read_bytes())
    assert run_cli(cli_args(glue_dir, config, vocab_file, resumed, *common, "--resume")) == 0
    a, b = _final_state(full), _final_state(resumed)
    _assert_same_parameters(a["model"], b["model"])
    assert a["global_step"] == b["global_step"] == 15
    assert a["optimizers"][0]["state"].keys() == b["optimizers"][0]["state"].keys()
    assert (full / "metrics.jsonl").read_text() == (resumed / "metrics.jsonl").read_text()


# SIGTERM (and SIGKILL) mid-epoch in another process, then --resume, equal to an uninterrupted
# run: tests/test_reliability.py, test_stop_at_a_random_step_then_resume_equals_an_uninterrupted_run.


# ---------------------------------------------------------------------------------------
# Distributed: two gloo processes equal one process with the same global batch
# ---------------------------------------------------------------------------------------

@pytest.mark.slow  # three runs, two of them as gloo processes (about 15 s)
def test_two_process_gloo_run_equals_one_process(tmp_path, glue_dir, vocab_file, repo_root):
    config = tiny_config(tmp_path / "config.json", dropout=0.0)  # dropout masks differ across layouts
    common = ["--do_train", "--do_eval", "--sample", "prop", "--num_train_epochs", "2", "--steps_per_epoch", "6",
              "--learning_rate", "1e-3", "--no_save_adapters", "--gradient_accumulation_steps", "2"]
    single = tmp_path / "single"
    assert run_cli(cli_args(glue_dir, config, vocab_file, single, *common)) == 0

    double = tmp_path / "double"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(repo_root / "run_multi_task.py"), *map(str, cli_args(glue_dir, config, vocab_file, double, *common))]
    result = subprocess.run(command, capture_output=True, text=True, cwd=repo_root, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (double / "train.log").read_text()
    assert "2 process(es)" in log
    assert "all 2 ranks drew the same 12 tasks" in log
    a, b = _final_state(single), _final_state(double)
    assert a["global_step"] == b["global_step"] == 12
    _assert_same_parameters(a["model"], b["model"], atol=1e-5)


# ---------------------------------------------------------------------------------------
# Training mechanics
# ---------------------------------------------------------------------------------------

def test_batch_stream_reshuffles_every_pass():
    stream = training.BatchStream(num_examples=10, batch_size=4, seed=1, task_id=0)
    drawn = np.concatenate([stream.next_indices() for _ in range(10)])  # 40 = 4 passes
    passes = drawn.reshape(4, 10)
    assert all(sorted(p) == list(range(10)) for p in passes)
    assert len({tuple(p) for p in passes}) == 4


def test_batch_stream_replays_the_first_pass_in_faithful_mode():
    stream = training.BatchStream(num_examples=10, batch_size=4, seed=1, task_id=0, replay_first_pass=True)
    batches = [tuple(stream.next_indices()) for _ in range(6)]
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]  # the last batch of a pass is partial
    assert batches[:3] == batches[3:]


def test_faithful_mode_turns_dropout_off_after_the_first_evaluation(tmp_path, glue_dir, vocab_file):
    config = tiny_config(tmp_path / "config.json")
    for replicate, expected_training in ((False, True), (True, False)):
        out = tmp_path / f"run_{replicate}"
        args = cli_args(glue_dir, config, vocab_file, out, "--do_train", "--do_eval", "--num_train_epochs", "2",
                        "--steps_per_epoch", "2", "--no_save_adapters", *(["--replicate_original"] if replicate else []),
                        tasks="cola,mrpc,mnli")  # no STS: its per-batch Pearson can be NaN, which never wins
        assert run_cli(args) == 0
        state = _final_state(out)
        assert state["dropout_disabled"] is (not expected_training)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(("original_metric" in r) is replicate for r in records if r["task"] != "mnli-mm")
        if replicate:
            best = json.loads((out / "eval_results.json").read_text())
            epoch = [r for r in records if r["epoch"] == best["epoch"] and r["task"] != "mnli-mm"]
            assert best["selection_score"] == pytest.approx(sum(r["original_metric"] for r in epoch))


def test_round_robin_trains_every_task_in_turn(tmp_path, glue_dir, vocab_file):
    config = tiny_config(tmp_path / "config.json")
    out = tmp_path / "rr"
    assert run_cli(cli_args(glue_dir, config, vocab_file, out, "--do_train", "--do_eval", "--sample", "rr",
                            "--num_train_epochs", "1", "--steps_per_epoch", "7", "--no_save_adapters")) == 0
    state = _final_state(out)
    losses = json.loads(state["epoch_losses"])
    assert [losses[t][1] for t in ("cola", "sts", "mnli")] == [3, 2, 2]


def test_sizes_come_from_the_data_unless_asked(tmp_path, glue_dir, vocab_file):
    config = tiny_config(tmp_path / "config.json")
    for flag, expected in (([], [len(glue.read_examples(glue_dir, t, "train")) for t in ("cola", "sts", "mnli")]),
                           (["--original_sizes"], [glue.ORIGINAL_SIZES[t] for t in ("cola", "sts", "mnli")])):
        out = tmp_path / f"sizes{len(flag)}"
        assert run_cli(cli_args(glue_dir, config, vocab_file, out, "--do_train", "--do_eval", "--sample", "prop",
                                "--num_train_epochs", "1", "--steps_per_epoch", "1", "--no_save_adapters", *flag)) == 0
        assert _final_state(out)["sampler"]["sizes"] == expected


def test_unsampled_task_parameters_move_only_when_drawn_unless_update_unsampled(tmp_path, glue_dir, vocab_file):
    """By default a task's parameters step only when the task is drawn; --update_unsampled
    (and --replicate_original) bring back the original's in-place zero_grad: after first
    use, a task's adapters are updated (momentum, weight decay) on every step."""
    config = tiny_config(tmp_path / "config.json")
    moved = {}
    for flag in ([], ["--update_unsampled"]):
        out = tmp_path / f"zero{len(flag)}"
        assert run_cli(cli_args(glue_dir, config, vocab_file, out, "--do_train", "--do_eval", "--sample", "rr",
                                "--num_train_epochs", "1", "--steps_per_epoch", "6", "--no_save_adapters", *flag)) == 0
        optimizer_state = _final_state(out)["optimizers"][0]["state"]
        moved[bool(flag)] = sorted(int(s["step"]) for s in optimizer_state.values())
    # rr over 3 tasks and 6 steps: shared parameters step 6 times; with in-place zeroing a
    # task first drawn at step k (0-based) steps 6 - k times, otherwise only twice.
    assert moved[True][-1] == 6 and set(moved[True]) == {4, 5, 6}
    assert set(moved[False]) == {2, 6}


# ---------------------------------------------------------------------------------------
# Bad input: one clear line and a non-zero exit
# ---------------------------------------------------------------------------------------

@pytest.fixture
def small_glue(tmp_path, glue_dir):
    import shutil
    folder = tmp_path / "glue"
    shutil.copytree(glue_dir, folder)
    return folder


def _expect_error(capsys, args, message):
    assert run_cli(args) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert stderr[-1].startswith("error: ") and message in stderr[-1], stderr[-1]


def test_malformed_row_names_file_and_line(tmp_path, small_glue, vocab_file, capsys):
    path = small_glue / "CoLA" / "train.tsv"
    lines = path.read_text().splitlines()
    lines[4] = "only_one_field"
    path.write_text("\n".join(lines) + "\n")
    config = tiny_config(tmp_path / "config.json")
    _expect_error(capsys, cli_args(small_glue, config, vocab_file, tmp_path / "out", "--do_train", "--do_eval"),
                  f"{path}:5")


def test_unknown_label_is_an_error(tmp_path, small_glue, vocab_file, capsys):
    path = small_glue / "MNLI" / "dev_matched.tsv"
    lines = path.read_text().splitlines()
    lines[2] = "\t".join(lines[2].split("\t")[:-1] + ["maybe"])
    path.write_text("\n".join(lines) + "\n")
    config = tiny_config(tmp_path / "config.json")
    _expect_error(capsys, cli_args(small_glue, config, vocab_file, tmp_path / "out", "--do_eval"), "'maybe'")


def test_unknown_task_is_an_error(tmp_path, glue_dir, vocab_file, capsys):
    config = tiny_config(tmp_path / "config.json")
    _expect_error(capsys, cli_args(glue_dir, config, vocab_file, tmp_path / "out", "--do_eval", tasks="cola,squad"),
                  "unknown task 'squad'")


def test_missing_file_is_an_error(tmp_path, small_glue, vocab_file, capsys):
    (small_glue / "STS-B" / "dev.tsv").unlink()
    config = tiny_config(tmp_path / "config.json")
    _expect_error(capsys, cli_args(small_glue, config, vocab_file, tmp_path / "out", "--do_eval"), "dev.tsv")


def test_non_empty_output_dir_is_refused(tmp_path, glue_dir, vocab_file, capsys):
    config = tiny_config(tmp_path / "config.json")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    _expect_error(capsys, cli_args(glue_dir, config, vocab_file, out, "--do_eval"), "is not empty")
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("extra, message", [
    (["--do_train", "--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1"),
    (["--do_train", "--gradient_accumulation_steps", "3"], "not divisible by --gradient_accumulation_steps"),
    (["--do_train", "--num_train_epochs", "2.5"], "--num_train_epochs must be a whole number"),
    (["--do_train", "--max_seq_length", "512"], "exceeds max_position_embeddings"),
    (["--do_train", "--h_aug", "20"], "must be divisible by 6"),
    (["--do_train", "--h_aug", "big"], "--h_aug must be an integer"),
    (["--do_train", "--fp16"], "--fp16 needs a CUDA device"),
    (["--do_train", "--init_checkpoint", "/nonexistent/ckpt.bin"], "--init_checkpoint /nonexistent/ckpt.bin: not found"),
    (["--do_train", "--resume"], "no training checkpoint to resume from"),
    ([], "nothing to do"),
])
def test_bad_flags_are_refused(tmp_path, glue_dir, vocab_file, capsys, extra, message):
    config = tiny_config(tmp_path / "config.json")
    _expect_error(capsys, cli_args(glue_dir, config, vocab_file, tmp_path / "out", *extra), message)


def test_bad_config_and_vocab_are_refused(tmp_path, glue_dir, vocab_file, capsys):
    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"vocab_size": 30522, "hidden_size": 30, "num_attention_heads": 4}')
    _expect_error(capsys, cli_args(glue_dir, bad_config, vocab_file, tmp_path / "o1", "--do_eval"),
                  "is not divisible by 'num_attention_heads'")
    bad_vocab = tmp_path / "vocab.txt"
    bad_vocab.write_text("[PAD]\nhello\n")
    config = tiny_config(tmp_path / "config.json")
    _expect_error(capsys, cli_args(glue_dir, config, bad_vocab, tmp_path / "o2", "--do_eval"), "[CLS]")


def test_nan_loss_stops_with_step_and_task(tmp_path, glue_dir, vocab_file, capsys):
    config = tiny_config(tmp_path / "config.json")
    out = tmp_path / "nan"
    # a learning rate this large blows the weights up within a few steps
    args = cli_args(glue_dir, config, vocab_file, out, "--do_train", "--do_eval", "--num_train_epochs", "3",
                    "--steps_per_epoch", "3", "--no_save_adapters", "--learning_rate", "1e30", "--warmup_proportion", "0")
    assert run_cli(args) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: non-finite training loss at step") and "task " in message
