"""predict.py and inference.Predictor: new text through a trained run, the same results
as the run's own evaluation, mixed-task batches, the shared input rule, bad input."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpointing
import extract_features
import glue
import inference
import predict
import run_multi_task
from errors import CheckpointError, DataError, UsageError
from inference import Predictor
from modeling import BertConfig, BertForMultiTask

ALL_TASKS = list(glue.TASKS)  # all nine, WNLI included
EVAL_BATCH_SIZE = 16


@pytest.fixture(scope="module")
def glue_dir(make_glue_dir):
    return make_glue_dir(seed=4, scale=0.3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, glue_dir, minilm_dir, repo_root):
    """A small PALs run on the demo data, every GLUE task, real MiniLM weights. Nine steps
    leave most heads still predicting more than one label (longer runs collapse the small
    tasks to their majority label), which the exactness check below needs; which tasks do
    depends on the batch order: seed 4 (with length-grouped batches) leaves enough."""
    output_dir = tmp_path_factory.mktemp("run") / "out"
    args = ["--data_dir", glue_dir, "--bert_config_file", repo_root / "configs" / "minilm_pals_config.json",
            "--vocab_file", minilm_dir / "vocab.txt", "--init_checkpoint", minilm_dir, "--output_dir", output_dir,
            "--tasks", ",".join(ALL_TASKS), "--do_lower_case", "--max_seq_length", "64", "--do_train", "--do_eval",
            "--num_train_epochs", "1", "--steps_per_epoch", "9", "--train_batch_size", "8",
            "--eval_batch_size", str(EVAL_BATCH_SIZE), "--learning_rate", "1e-4", "--seed", "4",
            "--save_checkpoints_steps", "0", "--no_plot"]
    assert run_multi_task.main([str(a) for a in args]) == 0
    return output_dir


@pytest.fixture(scope="module")
def predictor(run_dir):
    return Predictor.from_run(run_dir, max_seq_length=64, batch_size=EVAL_BATCH_SIZE)


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_predict(run_dir, input_file, output_file, *extra) -> int:
    """predict.py with unrounded numbers (--full_precision), as these tests compare them exactly."""
    return predict.main(["--model_dir", str(run_dir), "--input_file", str(input_file), "--full_precision",
                         "--output_file", str(output_file), "--max_seq_length", "64", *map(str, extra)])


# ---------------------------------------------------------------------------------------
# The same predictions as the run's evaluation (issue 13, item 4)
# ---------------------------------------------------------------------------------------

def dev_splits():
    return [(name, split) for name in ALL_TASKS for split in glue.TASKS[name].dev_splits]


def as_eval_predictions(task: str, results: list[dict]) -> np.ndarray:
    """predict.py's output turned back into what the evaluation scores: class ids, or the
    STS-B score / 5 (exact: score = 5 x the model's float32 output, clipped)."""
    if glue.TASKS[task].is_regression:
        return np.array([r["score"] / 5.0 for r in results])
    return np.array([glue.TASKS[task].labels.index(r["label"]) for r in results])


def test_predict_py_gives_exactly_the_evaluated_predictions(run_dir, glue_dir, tmp_path):
    """predict.py on every dev set (text input, pairs as A<TAB>B) reproduces every metric of
    eval_results.json exactly; one mixed-task JSON-lines file of all dev sets gives the
    same labels."""
    reported = json.loads((run_dir / "eval_results.json").read_text())["metrics"]
    assert set(reported) == {"mnli-mm", *ALL_TASKS}
    per_task, mixed_lines, varied = {}, [], 0
    for task, split in dev_splits():
        examples = glue.read_examples(glue_dir, task, split)
        lines = [e.text_a if e.text_b is None else f"{e.text_a}\t{e.text_b}" for e in examples]
        input_file = write_lines(tmp_path / f"{task}-{split}.txt", lines)
        output_file = tmp_path / f"{task}-{split}.jsonl"
        assert run_predict(run_dir, input_file, output_file, "--task", task, "--batch_size", EVAL_BATCH_SIZE) == 0
        results = read_jsonl(output_file)
        assert [r["line"] for r in results] == list(range(1, len(examples) + 1))
        assert {r["task"] for r in results} == {task}
        preds = as_eval_predictions(task, results)
        labels = np.array([glue._label_id(task, e.label) for e in examples])
        metrics = glue.compute_metrics(task, preds, labels)
        expected = reported["mnli-mm" if split == "dev_mismatched" else task]
        assert metrics == {name: expected[name] for name in metrics}, (task, split)  # exactly
        varied += len(set(preds.tolist())) > 1
        per_task[(task, split)] = results
        mixed_lines += [json.dumps({"text_a": e.text_a, "text_b": e.text_b, "task": task}) for e in examples]
    assert varied >= 5, "the model predicts one label for almost every task: a weak check"

    mixed_file = write_lines(tmp_path / "all.jsonl", mixed_lines)
    assert run_predict(run_dir, mixed_file, tmp_path / "all-out.jsonl") == 0
    mixed = read_jsonl(tmp_path / "all-out.jsonl")
    start = 0
    for (task, split), results in per_task.items():
        part = mixed[start:start + len(results)]
        start += len(results)
        if glue.TASKS[task].is_regression:
            np.testing.assert_allclose([r["score"] for r in part], [r["score"] for r in results], rtol=0, atol=5e-5)
        else:
            assert [r["label"] for r in part] == [r["label"] for r in results], (task, split)
    assert start == len(mixed)


# ---------------------------------------------------------------------------------------
# Output format, input rules, the Python API
# ---------------------------------------------------------------------------------------

LINES = ["a gripping, beautifully acted film",
         "A man is playing a guitar. ||| Someone is making music.",
         "The cat sat on the mat.\tA cat was sitting on a rug."]


def check_result(result: dict, task: str) -> None:
    spec = glue.TASKS[task]
    assert result["task"] == task
    if spec.is_regression:
        assert set(result) - {"line"} == {"task", "label", "score"}
        assert 0.0 <= result["score"] <= 5.0 and result["label"] == f"{result['score']:.3f}"
    else:
        assert set(result) - {"line"} == {"task", "label", "probabilities"}
        probabilities = result["probabilities"]
        assert list(probabilities) == list(spec.labels)
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-12)
        assert result["label"] == max(probabilities, key=probabilities.get)


def test_task_all_gives_one_object_per_line_and_task_in_order(run_dir, predictor, tmp_path):
    input_file = write_lines(tmp_path / "in.txt", LINES)
    assert run_predict(run_dir, input_file, tmp_path / "out.jsonl", "--task", "all",
                       "--batch_size", EVAL_BATCH_SIZE) == 0
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["line"], r["task"]) for r in results] == [(line, task) for line in (1, 2, 3) for task in ALL_TASKS]
    for result in results:
        check_result(result, result["task"])
    # The Python API gives the same objects (without the line number), and each task
    # alone gives the same numbers as the mixed-task batches of --task all.
    texts = ["a gripping, beautifully acted film", ("A man is playing a guitar.", "Someone is making music."),
             {"text_a": "The cat sat on the mat.", "text_b": "A cat was sitting on a rug."}]
    api = predictor("all", texts)
    assert api == [{k: v for k, v in r.items() if k != "line"} for r in results]
    for task in ALL_TASKS:
        alone = predictor(task, texts)
        mixed = [r for r in api if r["task"] == task]
        assert [r["label"] for r in alone] == [r["label"] for r in mixed]
        np.testing.assert_allclose(numbers(alone), numbers(mixed), rtol=0, atol=1e-5)


def numbers(results: list[dict]) -> list[float]:
    """Every probability and score of some results, in order."""
    return [value for r in results for value in [*r.get("probabilities", {}).values(), r.get("score", 0.0)]]


def test_sts_scores_are_on_the_0_to_5_scale_clipped():
    """The model predicts score / 5 (training divides the labels by 5)."""
    assert [glue.regression_score(x) for x in (0.5, 0.123, -0.2, 1.3)] == [2.5, 0.615, 0.0, 5.0]


def test_task_all_runs_mixed_task_batches(predictor):
    """One forward pass per batch with per-row task ids, not one call per task."""
    seen = []
    handle = predictor.model.register_forward_pre_hook(lambda _module, args: seen.append(args[3]))
    try:
        predictor("all", ["one sentence", "another, longer sentence here"])  # 18 rows, batches of 16
    finally:
        handle.remove()
    assert len(seen) == 2 and all(isinstance(task, torch.Tensor) and len(set(task.tolist())) > 1 for task in seen)
    assert sorted(torch.cat(seen).tolist()) == sorted(list(range(len(ALL_TASKS))) * 2)


def test_python_api_calls(predictor):
    [result] = predictor("mnli", [("A man plays a guitar.", "Someone makes music.")])
    check_result(result, "mnli")
    [result] = predictor("sts-b", ["A man plays.\tA man plays."])  # an alias; a tab is text here
    check_result(result, "sts")
    assert [r["task"] for r in predictor("rte,sst", ["x"])] == ["rte", "sst"]
    assert predictor.resolve_tasks(["SST-2", "sst"]) == ["sst"]
    with pytest.raises(UsageError, match="give a list of inputs"):
        predictor("sst", "a single string")
    with pytest.raises(UsageError, match="unknown task 'nope'"):
        predictor("nope", ["x"])
    with pytest.raises(UsageError, match=r"input 1: expected a text, a \(text_a, text_b\) pair"):
        predictor("sst", ["fine", 7])
    with pytest.raises(UsageError, match="a request names one task, got 'sst,rte'"):
        list(predictor.predict([("sst,rte", "x", None)]))
    with pytest.raises(UsageError, match=r"request 0: expected \(task, text_a, text_b\)"):
        list(predictor.predict([("sst",)]))
    assert predictor.model.training is False


def test_from_adapters_equals_from_run(run_dir, predictor, tmp_path):
    adapters = run_dir / checkpointing.ADAPTER_DIR
    rebuilt = Predictor.from_adapters(run_dir / checkpointing.BEST_MODEL_FILE,
                                      [adapters / "rte.safetensors", adapters / "sts.safetensors"],
                                      run_dir / "vocab.txt", max_seq_length=64)
    assert rebuilt.task_names == ["rte", "sts"]
    texts = [("A man plays.", "A person plays music."), ("Dogs bark.", "Cats meow loudly at night.")]
    for task in ("rte", "sts"):
        ours, theirs = rebuilt(task, texts), predictor(task, texts)
        assert [r["label"] for r in ours] == [r["label"] for r in theirs]
        np.testing.assert_allclose(numbers(ours), numbers(theirs), rtol=0, atol=1e-5)
    # The same through the CLI flags run_multi_task.py takes.
    input_file = write_lines(tmp_path / "in.txt", ["A man plays. ||| A person plays music."])
    code = predict.main(["--init_checkpoint", str(run_dir / checkpointing.BEST_MODEL_FILE),
                         "--adapter_checkpoints", f"{adapters / 'rte.safetensors'}",
                         "--vocab_file", str(run_dir / "vocab.txt"), "--max_seq_length", "64",
                         "--input_file", str(input_file), "--output_file", str(tmp_path / "out.jsonl"), "--task", "rte"])
    assert code == 0
    [result] = read_jsonl(tmp_path / "out.jsonl")
    assert result["label"] == predictor("rte", [texts[0]])[0]["label"]


def test_jsonl_lines_choose_their_task_and_stdout(run_dir, repo_root, tmp_path):
    """JSON lines mix tasks; a line's task wins over --task; --output_file - is stdout;
    run as a script."""
    input_file = write_lines(tmp_path / "in.jsonl", [
        json.dumps({"text_a": "a fine film", "task": "sst"}),
        json.dumps({"text_a": "A man plays.", "text_b": "A person plays.", "task": "MNLI"}),
        json.dumps({"text_a": "two words"}),  # takes --task
    ])
    result = subprocess.run([sys.executable, "predict.py", "--model_dir", str(run_dir), "--input_file",
                             str(input_file), "--output_file", "-", "--task", "cola", "--max_seq_length", "64"],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    results = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["line"], r["task"]) for r in results] == [(1, "sst"), (2, "mnli"), (3, "cola")]


def test_long_lines_are_truncated_and_counted_in_one_warning(run_dir, tmp_path, caplog):
    long = " ".join(["word"] * 40)
    input_file = write_lines(tmp_path / "in.txt", ["short", long, "short again", f"{long} ||| {long}"])
    with caplog.at_level(logging.WARNING, logger="predict"):
        code = predict.main(["--model_dir", str(run_dir), "--input_file", str(input_file), "--output_file",
                             str(tmp_path / "out.jsonl"), "--task", "sst,rte", "--max_seq_length", "16"])
    assert code == 0
    results = read_jsonl(tmp_path / "out.jsonl")
    assert [r["line"] for r in results if r.get("truncated")] == [2, 2, 4, 4]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["2 input lines had more than 16 tokens and were truncated (first: line 2); "
                        "--max_seq_length sets the limit"]


def test_truncation_is_flagged_exactly_when_tokens_are_dropped(predictor):
    """[CLS] a [SEP] holds max_seq_length - 2 tokens of a, a pair max_seq_length - 3."""
    tokenizer = predictor.tokenizer

    def truncated(text_a, text_b=None):
        example = glue.InputExample(0, text_a, text_b)
        return glue.example_to_features(example, tokenizer, 16).truncated

    assert not truncated(" ".join(["word"] * 14)) and truncated(" ".join(["word"] * 15))
    assert not truncated(" ".join(["word"] * 7), " ".join(["word"] * 6))
    assert truncated(" ".join(["word"] * 7), " ".join(["word"] * 7))


def test_results_stream_in_order_across_windows(predictor, monkeypatch):
    """Many small windows (batches of 2, one batch per window) give the same results, in
    the same order, as one window."""
    texts = [" ".join(["word"] * (1 + (7 * k) % 11)) for k in range(9)]
    expected = predictor("sst,sts", texts)
    small = Predictor(predictor.model, predictor.task_names, predictor.tokenizer, max_seq_length=64, batch_size=2)
    monkeypatch.setattr(inference, "WINDOW_BATCHES", 1)
    got = small("sst,sts", texts)
    assert [(r["task"], r["label"]) for r in got] == [(r["task"], r["label"]) for r in expected]
    np.testing.assert_allclose(numbers(got), numbers(expected), rtol=0, atol=1e-5)


def test_a_crash_leaves_no_partial_output(run_dir, tmp_path, monkeypatch):
    calls = []
    original = Predictor._result

    def failing_result(self, *args):
        calls.append(1)
        if len(calls) == 40:
            raise RuntimeError("simulated crash")
        return original(self, *args)

    monkeypatch.setattr(Predictor, "_result", failing_result)
    monkeypatch.setattr(inference, "WINDOW_BATCHES", 1)  # lines are written before the crash
    input_file = write_lines(tmp_path / "in.txt", [f"sentence number {k}" for k in range(100)])
    output = tmp_path / "out.jsonl"
    output.write_text("previous run\n")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_predict(run_dir, input_file, output, "--task", "sst", "--batch_size", "4")
    assert output.read_text() == "previous run\n"  # untouched, and no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.jsonl"]


def test_lower_casing_and_length_follow_the_run(run_dir, tmp_path):
    """A run folder's args.json says how the run tokenised: lower-cased, 64 tokens."""
    predictor = Predictor.from_run(run_dir)
    assert predictor.max_seq_length == 64
    assert predictor.tokenizer.tokenize("The CAT") == ["the", "cat"]
    assert Predictor.from_run(run_dir, max_seq_length=32).max_seq_length == 32  # given: it wins
    # A copy of the run whose args.json says the run kept case (and no length).
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "adapters"))
    arguments = json.loads((copy / "args.json").read_text())
    arguments["do_lower_case"] = False
    del arguments["max_seq_length"]
    (copy / "args.json").write_text(json.dumps(arguments))
    kept_case = Predictor.from_run(copy)
    assert kept_case.tokenizer.tokenize("The CAT") == ["[UNK]", "[UNK]"]  # an uncased vocabulary has neither
    assert kept_case.max_seq_length == inference.DEFAULT_MAX_SEQ_LENGTH


def test_lower_casing_follows_the_vocabulary(run_dir, tmp_path):
    """Without the run's args.json, the vocabulary says whether to lower-case."""
    uncased = inference.make_tokenizer(run_dir / "vocab.txt", None)
    assert uncased.tokenize("The CAT") == ["the", "cat"]
    names = [f"Name{chr(65 + i % 26)}{chr(65 + i // 26)}" for i in range(150)]  # a cased vocabulary's capitals
    cased_vocab = write_lines(tmp_path / "vocab.txt", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "The", "the", "CAT", *names])
    assert inference.make_tokenizer(cased_vocab, None).tokenize("The CAT") == ["The", "CAT"]
    assert inference.make_tokenizer(cased_vocab, True).tokenize("The CAT") == ["the", "[UNK]"]


# ---------------------------------------------------------------------------------------
# The input rule shared with extract_features.py
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("one sentence", ("one sentence", None)),
    ("  A ||| B  ", ("A", "B")),
    ("A\tB", ("A", "B")),
    (" A \t B ", ("A", "B")),
    ("a ||| b ||| c", ("a ||| b", "c")),  # the original's greedy pattern
    ("a|||b", ("a|||b", None)),  # the separator needs its spaces, as in the original
    ("A\tB ||| C", ("A\tB", "C")),  # ||| first
])
def test_split_text_pair(line, expected):
    assert glue.split_text_pair(line) == expected


def test_extract_features_and_predict_read_lines_alike(predictor, tmp_path):
    path = write_lines(tmp_path / "in.txt", ["A ||| B", "C\tD", "E"])
    assert [(e.text_a, e.text_b) for e in extract_features.read_examples(str(path))] == [
        ("A", "B"), ("C", "D"), ("E", None)]
    assert [(r.text_a, r.text_b) for _, r in inference.read_requests(path, predictor, ["sst"])] == [
        ("A", "B"), ("C", "D"), ("E", None)]
    bad = write_lines(tmp_path / "bad.txt", ["fine", "a\tb\tc"])
    with pytest.raises(DataError, match=r"bad.txt:2: 3 tab-separated fields"):
        list(extract_features.read_examples(str(bad)))
    with pytest.raises(DataError, match=r"bad.txt:2: 3 tab-separated fields"):
        list(inference.read_requests(bad, predictor, ["sst"]))


# ---------------------------------------------------------------------------------------
# Bad input: one error line, exit status 2, no output file
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, input_name, fragment", [
    (b"", "in.txt", "in.txt: input file is empty"),
    (b"fine\n\nnext\n", "in.txt", "in.txt:2: empty line"),
    (b"fine\n\xff\xfe bad\n", "in.txt", "in.txt:2: not valid UTF-8"),
    (b'{"text_a": "fine"}\n{"text_b": "no text_a"}\n', "in.jsonl", 'in.jsonl:2: no "text_a"'),
    (b'{"text_a": "fine"}\n{"text_a": \n', "in.jsonl", "in.jsonl:2: not a JSON object"),
    (b'["text_a"]\n', "in.jsonl", "in.jsonl:1: expected a JSON object"),
    (b'{"text_a": "x", "text_B": "y"}\n', "in.jsonl", "in.jsonl:1: unknown key 'text_B'"),
    (b'{"text_a": "x", "task": "nope"}\n', "in.jsonl", "in.jsonl:1: task 'nope': unknown task"),
    (b'{"text_a": "   "}\n', "in.jsonl", "in.jsonl:1: text_a is empty"),
])
def test_bad_input_lines(run_dir, tmp_path, capsys, content, input_name, fragment):
    input_file = tmp_path / input_name
    input_file.write_bytes(content)
    output = tmp_path / "out.jsonl"
    output.write_text("previous\n")
    assert run_predict(run_dir, input_file, output, "--task", "sst") == 2
    assert_one_error_line(capsys, fragment)
    assert output.read_text() == "previous\n"  # untouched, and no temporary file beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([input_name, "out.jsonl"])


def assert_one_error_line(capsys, fragment: str) -> None:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra, fragment", [
    (["--task", "nope"], "task 'nope': unknown task 'nope'"),
    (["--task", "sst,qqq"], "unknown task 'qqq'"),
    ([], "in.txt:1: no task for this line: give --task"),
    (["--task", "sst", "--max_seq_length", "600"], "max_seq_length must be between 3 and max_position_embeddings (512)"),
    (["--task", "sst", "--batch_size", "0"], "batch size must be at least 1"),
])
def test_bad_arguments(run_dir, tmp_path, capsys, extra, fragment):
    input_file = write_lines(tmp_path / "in.txt", ["fine"])
    code = predict.main(["--model_dir", str(run_dir), "--input_file", str(input_file),
                         "--output_file", str(tmp_path / "out.jsonl"), *extra])
    assert code == 2
    assert_one_error_line(capsys, fragment)
    assert not (tmp_path / "out.jsonl").exists()


def test_task_the_run_did_not_train(run_dir, tmp_path, capsys):
    adapters = run_dir / checkpointing.ADAPTER_DIR
    input_file = write_lines(tmp_path / "in.txt", ["fine"])
    code = predict.main(["--init_checkpoint", str(run_dir / checkpointing.BEST_MODEL_FILE),
                         "--adapter_checkpoints", str(adapters / "sst.safetensors"), "--vocab_file",
                         str(run_dir / "vocab.txt"), "--input_file", str(input_file), "--output_file",
                         str(tmp_path / "out.jsonl"), "--task", "rte"])
    assert code == 2
    assert_one_error_line(capsys, "task 'rte': the model was trained on sst only")


def copy_run(run_dir: Path, folder: Path) -> Path:
    """The four files of a run folder (without the large checkpoints)."""
    folder.mkdir()
    for name in checkpointing.MODEL_FOLDER_FILES:
        shutil.copy(run_dir / name, folder / name)
    return folder


@pytest.mark.parametrize("missing", ["best_model.pth", "tasks.json", "vocab.txt", "config.json"])
def test_incomplete_model_folder(run_dir, tmp_path, capsys, missing):
    folder = copy_run(run_dir, tmp_path / "run")
    (folder / missing).unlink()
    input_file = write_lines(tmp_path / "in.txt", ["fine"])
    assert run_predict(folder, input_file, tmp_path / "out.jsonl", "--task", "sst") == 2
    assert_one_error_line(capsys, f"incomplete model folder, missing {missing}")
    assert not (tmp_path / "out.jsonl").exists()


def test_weights_of_another_architecture_name_the_key(run_dir, repo_root, tmp_path, capsys):
    """best_model.pth of a low-rank model beside a PALs config.json: the missing key is named
    (nothing is left at its random initialisation)."""
    folder = copy_run(run_dir, tmp_path / "run")
    config = BertConfig.from_json_file(repo_root / "configs" / "minilm_low_rank_config.json")
    low_rank = BertForMultiTask(config.replace(num_tasks=len(ALL_TASKS)), [glue.TASKS[t].num_labels for t in ALL_TASKS])
    torch.save(low_rank.state_dict(), folder / "best_model.pth")
    input_file = write_lines(tmp_path / "in.txt", ["fine"])
    assert run_predict(folder, input_file, tmp_path / "out.jsonl", "--task", "sst") == 2
    assert_one_error_line(capsys, "best_model.pth: lacks tensor 'bert.encoder.layer.0.multi_layers.0.attn.query.weight'")
    # An adapter file of another architecture beside the run's own.
    checkpointing.save_adapter_checkpoints(low_rank, ALL_TASKS, tmp_path / "low_rank")
    adapters = run_dir / checkpointing.ADAPTER_DIR
    code = predict.main(["--init_checkpoint", str(run_dir / checkpointing.BEST_MODEL_FILE), "--adapter_checkpoints",
                         f"{adapters / 'sst.safetensors'},{tmp_path / 'low_rank' / 'rte.safetensors'}",
                         "--vocab_file", str(run_dir / "vocab.txt"), "--input_file", str(input_file),
                         "--output_file", str(tmp_path / "out.jsonl"), "--task", "sst"])
    assert code == 2
    assert_one_error_line(capsys, "rte.safetensors: built for a different architecture")


def test_vocabulary_that_does_not_fit_the_config(run_dir, tmp_path, capsys):
    folder = copy_run(run_dir, tmp_path / "run")
    with (folder / "vocab.txt").open("a", encoding="utf-8") as vocab:
        vocab.write("extra1\nextra2\n")
    input_file = write_lines(tmp_path / "in.txt", ["fine"])
    assert run_predict(folder, input_file, tmp_path / "out.jsonl", "--task", "sst") == 2
    assert_one_error_line(capsys, f"{folder / 'vocab.txt'} has token ids up to 30523, but vocab_size in "
                                  f"{folder / 'config.json'} is 30522")


def test_model_flags_are_checked(tmp_path, capsys):
    input_file = write_lines(tmp_path / "in.txt", ["fine"])
    for extra, fragment in ([[], "give --model_dir"],
                            [["--adapter_checkpoints", "a.safetensors"], "needs --init_checkpoint"],
                            [["--model_dir", str(tmp_path / "absent")], "absent: not a folder"]):
        code = predict.main(["--input_file", str(input_file), "--output_file", str(tmp_path / "o.jsonl"), *extra])
        assert code == 2
        assert_one_error_line(capsys, fragment)


# ---------------------------------------------------------------------------------------
# checkpointing: a run folder wherever weights are taken (issue 14, item 15)
# ---------------------------------------------------------------------------------------

def test_load_pretrained_weights_accepts_a_run_folder(run_dir):
    folder = checkpointing.load_model_folder(run_dir)
    config = BertConfig.from_json_file(run_dir / "config.json")
    model = BertForMultiTask(config, [glue.TASKS[t].num_labels for t in ALL_TASKS])
    report = checkpointing.load_pretrained_weights(model, run_dir)
    assert report.source == str(run_dir) and not report.kept_init and not report.ignored
    expected = torch.load(run_dir / "best_model.pth", weights_only=True)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    assert folder.task_names == ALL_TASKS and folder.vocab_file == run_dir / "vocab.txt"
    assert not folder.model.training


def test_the_readme_python_api_example_runs(run_dir, minilm_dir, repo_root, monkeypatch, capsys):
    """Both code blocks of the README's "Python API", with the run folder and BERT paths filled in."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]
    assert len(blocks) == 2 and "eval" in blocks[0] and "model.train()" in blocks[1]
    code = "\n".join(blocks).replace('"runs/pals"', repr(str(run_dir))).replace('"path/to/bert"', repr(str(minilm_dir)))
    monkeypatch.chdir(repo_root)
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    printed = capsys.readouterr().out.strip()
    assert printed in glue.TASKS["mnli"].labels
    assert namespace["run"].model.training is False and namespace["model"].training is True
    assert namespace["loss"].dim() == 0 and namespace["logits"].shape == (1, 3)


def test_a_folder_without_weights_names_what_it_looked_for(tmp_path):
    config = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8)
    with pytest.raises(CheckpointError, match="holds none of model.safetensors, pytorch_model.bin, best_model.pth"):
        checkpointing.load_pretrained_weights(BertForMultiTask(config, [2]), tmp_path)


# ---------------------------------------------------------------------------------------
# What a user gets wrong must be said (issue 23)
# ---------------------------------------------------------------------------------------

def shared_bert_of_another_run(run_dir: Path, path: Path) -> Path:
    """The run's best_model.pth with one shared BERT weight moved a little: what the
    shared BERT of another run of the same architecture is to these adapters."""
    state = torch.load(run_dir / checkpointing.BEST_MODEL_FILE, weights_only=True)
    state["bert.pooler.dense.weight"] = state["bert.pooler.dense.weight"] + 1e-3
    torch.save(state, path)
    return path


def test_adapters_record_what_they_were_trained_with(run_dir):
    from safetensors import safe_open
    with safe_open(str(run_dir / "adapters" / "sst.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["do_lower_case"]) is True and json.loads(metadata["max_seq_length"]) == 64
    assert len(metadata["vocab_sha256"]) == 64 and len(metadata["shared_bert_sha256"]) == 64
    # Without --max_seq_length and lower-casing flags, from_adapters takes the run's own.
    rebuilt = Predictor.from_adapters(run_dir / "best_model.pth", [run_dir / "adapters" / "sst.safetensors"],
                                      run_dir / "vocab.txt")
    assert rebuilt.max_seq_length == 64 and rebuilt.tokenizer.tokenize("The CAT") == ["the", "cat"]


def test_adapters_beside_another_shared_bert_are_refused(run_dir, tmp_path, capsys):
    """Issue 23, item 3: one run's BERT with another run's adapter gave probabilities near
    0.5 without a word."""
    other = shared_bert_of_another_run(run_dir, tmp_path / "other_best_model.pth")
    adapter = run_dir / "adapters" / "cola.safetensors"
    with pytest.raises(CheckpointError, match=r"cola.safetensors: trained beside another shared BERT"):
        Predictor.from_adapters(other, [adapter], run_dir / "vocab.txt")
    input_file = write_lines(tmp_path / "in.txt", ["fine"])
    code = predict.main(["--init_checkpoint", str(other), "--adapter_checkpoints", str(adapter), "--vocab_file",
                         str(run_dir / "vocab.txt"), "--input_file", str(input_file), "--output_file",
                         str(tmp_path / "out.jsonl"), "--task", "cola"])
    assert code == 2
    assert_one_error_line(capsys, f"{adapter}: trained beside another shared BERT")
    assert not (tmp_path / "out.jsonl").exists()
    # ... and the same for run_multi_task.py, which rebuilds models the same way
    with pytest.raises(CheckpointError, match="trained beside another shared BERT"):
        checkpointing.build_model_from_adapters(other, [adapter])


def short_vocabulary(run_dir: Path, path: Path, entries: int = 3000) -> Path:
    """The run's vocabulary cut to its first ``entries`` tokens (ids still fit the model)."""
    lines = (run_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return write_lines(path, lines[:entries])


def test_another_vocabulary_is_refused_with_adapters_and_warned_about_in_a_run_folder(run_dir, tmp_path, capsys,
                                                                                       caplog):
    """Issue 23, item 3: a 3,000-entry vocabulary flipped predictions without a warning."""
    vocab = short_vocabulary(run_dir, tmp_path / "vocab3000.txt")
    input_file = write_lines(tmp_path / "in.txt", ["a gripping, beautifully acted film"])
    code = predict.main(["--init_checkpoint", str(run_dir / "best_model.pth"), "--adapter_checkpoints",
                         str(run_dir / "adapters" / "sst.safetensors"), "--vocab_file", str(vocab), "--input_file",
                         str(input_file), "--output_file", str(tmp_path / "out.jsonl"), "--task", "sst"])
    assert code == 2
    assert_one_error_line(capsys, f"{vocab}: not the vocabulary the adapters were trained with")
    # A run folder whose vocab.txt was replaced: what training warns about, predict.py does too.
    folder = copy_run(run_dir, tmp_path / "run")
    shutil.copy(vocab, folder / "vocab.txt")
    with caplog.at_level(logging.WARNING, logger="predict"):
        assert run_predict(folder, input_file, tmp_path / "out.jsonl", "--task", "sst") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{folder / 'vocab.txt'} has 3000 entries but the model's vocab_size is 30522" in " ".join(warnings)


def test_adapter_loading_does_not_say_the_adapters_keep_their_initialisation(run_dir, caplog):
    """Issue 23, item 8: the task modules are loaded from the adapter files right after."""
    with caplog.at_level(logging.INFO):
        Predictor.from_adapters(run_dir / "best_model.pth", [run_dir / "adapters" / "rte.safetensors"],
                                run_dir / "vocab.txt")
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded ")]
    assert "keep their initialisation" not in line
    assert "tensors of task modules are loaded next from the adapter files (rte.safetensors)" in line


def test_where_the_model_of_a_run_folder_comes_from_is_logged(run_dir, caplog):
    """Issue 23, item 4 (a finished run; the unfinished ones are in test_first_use.py)."""
    with caplog.at_level(logging.INFO, logger="predict"):
        Predictor.from_run(run_dir)
    lines = [r.getMessage() for r in caplog.records if r.name == "predict"]
    assert any(line.startswith(f"{run_dir}: the best model of epoch 0 (step 9, GLUE average ")
               and line.endswith("; the run finished (step 9, 1 epochs)") for line in lines), lines


def test_blank_lines_at_the_end_are_ignored_and_between_examples_explained(run_dir, tmp_path, capsys):
    """Issue 23, item 5: most editors end a file with a blank line."""
    input_file = tmp_path / "trailing.txt"
    input_file.write_bytes(b"a fine film\nan awful film\n\n\n")
    assert run_predict(run_dir, input_file, tmp_path / "out.jsonl", "--task", "sst") == 0
    assert [r["line"] for r in read_jsonl(tmp_path / "out.jsonl")] == [1, 2]
    input_file.write_bytes(b"a fine film\n\nan awful film\n")
    assert run_predict(run_dir, input_file, tmp_path / "out.jsonl", "--task", "sst") == 2
    assert_one_error_line(capsys, "trailing.txt:2: empty line between examples: every line is one example with "
                                  "its own results, and skipping it would shift the results against the input lines")


def test_probabilities_have_three_decimals_unless_full_precision(run_dir, tmp_path, capsys, caplog):
    """Issue 23, items 10 and 8: 3 decimals by default; the tasks asked for are logged,
    and standard output is called so."""
    input_file = write_lines(tmp_path / "in.txt", LINES)
    common = ["--model_dir", str(run_dir), "--input_file", str(input_file), "--task", "sst,sts"]
    assert predict.main([*common, "--output_file", str(tmp_path / "full.jsonl"), "--full_precision"]) == 0
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="predict"):
        assert predict.main([*common, "--output_file", "-"]) == 0
    short = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    full = read_jsonl(tmp_path / "full.jsonl")
    assert [r["label"] for r in short] == [r["label"] for r in full]
    for rounded, exact in zip(short, full):
        if "probabilities" in exact:
            assert rounded["probabilities"] == {k: round(v, 3) for k, v in exact["probabilities"].items()}
            assert any(len(repr(v).split(".")[1]) > 3 for v in exact["probabilities"].values())
        else:
            assert rounded["score"] == round(exact["score"], 3)
    messages = [r.getMessage() for r in caplog.records if r.name == "predict"]
    assert any(m.startswith("tasks sst, sts (the model has cola, mrpc,") for m in messages), messages
    assert "wrote 6 predictions to standard output" in messages


def test_the_api_works_from_any_folder_as_the_readme_says(run_dir, repo_root, tmp_path):
    """Issue 23, item 7: the modules live at the repository root, not in an installed
    package. The README's instruction (put the root on the path: PYTHONPATH, or
    sys.path.insert) is run from another folder, and without it the import fails."""
    code = (f"from inference import Predictor\n"
            f"predictor = Predictor.from_run({str(run_dir)!r})\n"
            f"print(predictor('sst', ['a gripping film'])[0]['label'])\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    def python(source, **extra_env):
        return subprocess.run([sys.executable, "-c", source], cwd=elsewhere, capture_output=True, text=True,
                              timeout=300, env={**env, **extra_env})

    without = python(code)
    assert without.returncode != 0 and "No module named 'inference'" in without.stderr
    with_path = python(code, PYTHONPATH=str(repo_root))  # export PYTHONPATH=/path/to/the/repository
    assert with_path.returncode == 0, with_path.stderr
    assert with_path.stdout.strip() in ("0", "1")
    in_python = python(f"import sys\nsys.path.insert(0, {str(repo_root)!r})\n" + code)
    assert in_python.returncode == 0, in_python.stderr
    assert in_python.stdout == with_path.stdout


def test_help_agrees_with_itself(capsys):
    """Issue 23, item 9: no '(default: None)', and no default said twice."""
    import convert_tf_checkpoint_to_pytorch
    for module in (predict, run_multi_task, extract_features, convert_tf_checkpoint_to_pytorch):
        with pytest.raises(SystemExit):
            module.main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text, module.__name__
        for entry in re.split(r" (?=--\w)", text):
            assert entry.count("default") <= 1, (module.__name__, entry)
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("(default: the training run's own value, from its args.json or what the adapter files record; 128 "
            "for files of earlier versions)") in text
