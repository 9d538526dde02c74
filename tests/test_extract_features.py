"""extract_features.py: hidden states as JSON lines, checked against transformers."""
import collections
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import extract_features as ef
import glue
from checkpointing import load_pretrained_weights
from modeling import BertConfig, BertForMultiTask, BertModel

TOLERANCE = 1e-5  # fp32 differences plus rounding at the 6th decimal

SINGLES = ["The quick brown fox jumps over the lazy dog.", "Hello world!", "BERT and PALs."]
PAIRS = [("The cat sat on the mat.", "A cat was sitting on a rug."),
         ("Is it raining?", "No, the sun is shining brightly over the hills today.")]


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reference(transformers, minilm_dir):
    return transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def hf_tokenizers(transformers, minilm_dir):
    vocab = str(minilm_dir / "vocab.txt")
    return {lower: transformers.BertTokenizerFast(vocab, do_lower_case=lower, tokenize_chinese_chars=False)
            for lower in (True, False)}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def run_main(minilm_dir, tmp_path, lines, *extra, config=None, checkpoint=None, name="out.jsonl"):
    """Run the CLI's main() in-process; returns (exit code, output path)."""
    input_file = write_lines(tmp_path / "input.txt", lines) if lines is not None else tmp_path / "input.txt"
    output = tmp_path / name
    argv = ["--input_file", str(input_file), "--output_file", str(output),
            "--vocab_file", str(minilm_dir / "vocab.txt"),
            "--bert_config_file", str(config or minilm_dir / "config.json"),
            "--init_checkpoint", str(checkpoint or minilm_dir), *map(str, extra)]
    return ef.main(argv), output


def read_output(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def reference_layers(model, tokenizer, examples, with_types=True):
    """transformers on a padded batch: per example its tokens and hidden states [num_layers, n, H].

    ``examples`` are (text_a, text_b or None). Only real tokens are returned (padding
    rows are ill-conditioned in fp32; real tokens agree to 1e-5, see test_modeling).
    """
    texts_a = [a for a, _ in examples]
    texts_b = [b for _, b in examples]
    if all(b is None for b in texts_b):
        encoding = tokenizer(texts_a, padding=True, return_tensors="pt")
    else:
        assert all(b is not None for b in texts_b), "one batch: all singles or all pairs"
        encoding = tokenizer(texts_a, texts_b, padding=True, return_tensors="pt")
    kwargs = dict(input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"])
    if with_types:
        kwargs["token_type_ids"] = encoding["token_type_ids"]
    with torch.no_grad():
        hidden = torch.stack(model(**kwargs, output_hidden_states=True).hidden_states[1:])  # [L, B, T, H]
    results = []
    for row in range(len(examples)):
        length = int(encoding["attention_mask"][row].sum())
        tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"][row, :length])
        results.append((tokens, hidden[:, row, :length]))
    return results


def split_line(line):
    a, _, b = line.partition(" ||| ")
    return a, (b or None)


def assert_matches(record, tokens, layers, layer_indexes):
    assert [f["token"] for f in record["features"]] == tokens
    for position, feature in enumerate(record["features"]):
        assert [layer["index"] for layer in feature["layers"]] == layer_indexes
        for layer in feature["layers"]:
            expected = layers[layer["index"], position]
            difference = (torch.tensor(layer["values"]) - expected).abs().max().item()
            assert difference <= TOLERANCE, (record["linex_index"], position, layer["index"], difference)


# ---------------------------------------------------------------------------------------
# Values against transformers
# ---------------------------------------------------------------------------------------

def test_single_sentences_match_transformers(minilm_dir, tmp_path, reference, hf_tokenizers):
    code, output = run_main(minilm_dir, tmp_path, SINGLES, "--layers=-1,-3,0")
    assert code == 0
    records = read_output(output)
    assert [r["linex_index"] for r in records] == list(range(len(SINGLES)))
    for record, (tokens, layers) in zip(records, reference_layers(reference, hf_tokenizers[True],
                                                                  [(text, None) for text in SINGLES])):
        assert_matches(record, tokens, layers, [-1, -3, 0])


def test_pairs_match_transformers_with_segment_ids(minilm_dir, tmp_path, reference, hf_tokenizers):
    lines = [f"{a} ||| {b}" for a, b in PAIRS]
    code, output = run_main(minilm_dir, tmp_path, lines)  # default layers -1,-2,-3,-4
    assert code == 0
    typed = reference_layers(reference, hf_tokenizers[True], PAIRS)
    # The original passed no segment ids; that would be far off on segment B tokens.
    untyped = reference_layers(reference, hf_tokenizers[True], PAIRS, with_types=False)
    for record, (tokens, layers), (_, untyped_layers) in zip(read_output(output), typed, untyped):
        assert tokens.count("[SEP]") == 2
        assert_matches(record, tokens, layers, [-1, -2, -3, -4])
        last = torch.tensor([f["layers"][0]["values"] for f in record["features"]])
        assert (last - untyped_layers[-1]).abs().max() > 1e-3


def test_cli_subprocess_truncates_like_the_original(minilm_dir, tmp_path, reference, hf_tokenizers, repo_root):
    """The real command line; pairs are truncated longest-first to max_seq_length - 3."""
    a = "one two three four five six seven eight nine ten"
    b = "alpha beta"
    input_file = write_lines(tmp_path / "in.txt", [f"{a} ||| {b}", a])
    output = tmp_path / "out.jsonl"
    result = subprocess.run(
        [sys.executable, "extract_features.py", "--input_file", str(input_file), "--output_file", str(output),
         "--vocab_file", str(minilm_dir / "vocab.txt"), "--bert_config_file", str(minilm_dir / "config.json"),
         "--init_checkpoint", str(minilm_dir), "--max_seq_length", "9", "--layers", "-1", "--no_cuda"],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    pair, single = read_output(output)
    # 6 tokens of room: A is the longer one, so only A loses words (down to 4); B keeps its 2.
    assert [f["token"] for f in pair["features"]] == ["[CLS]", "one", "two", "three", "four", "[SEP]",
                                                      "alpha", "beta", "[SEP]"]
    assert [f["token"] for f in single["features"]] == ["[CLS]"] + a.split()[:7] + ["[SEP]"]
    [(tokens, layers)] = reference_layers(reference, hf_tokenizers[True], [("one two three four", b)])
    assert_matches(pair, tokens, layers, [-1])


# ---------------------------------------------------------------------------------------
# Layout and order
# ---------------------------------------------------------------------------------------

def original_line(unique_id, tokens, layers, layer_indexes):
    """The original's formatting code: OrderedDicts, round(x.item(), 6), json.dumps."""
    output_json = collections.OrderedDict()
    output_json["linex_index"] = unique_id
    all_out_features = []
    for i, token in enumerate(tokens):
        all_layers = []
        for layer_index in layer_indexes:
            layer_output = layers[int(layer_index)].numpy()
            entry = collections.OrderedDict()
            entry["index"] = layer_index
            entry["values"] = [round(x.item(), 6) for x in layer_output[i]]
            all_layers.append(entry)
        out_features = collections.OrderedDict()
        out_features["token"] = token
        out_features["layers"] = all_layers
        all_out_features.append(out_features)
    output_json["features"] = all_out_features
    return json.dumps(output_json)


def test_layout_is_the_original_byte_for_byte(minilm_dir, tmp_path):
    """With batch size 1 (no padding) our model's own states, formatted by the original's code."""
    lines = ["Hello there, general Kenobi!", "Short ||| pair"]
    code, output = run_main(minilm_dir, tmp_path, lines, "--layers=-1,-2", "--batch_size", "1")
    assert code == 0
    model = BertModel(BertConfig.from_json_file(minilm_dir / "config.json"))
    load_pretrained_weights(model, minilm_dir)
    model.eval()
    written = output.read_text(encoding="utf-8").split("\n")
    assert written[-1] == "" and len(written) == len(lines) + 1  # one "\n"-terminated line each
    for unique_id, (line, text) in enumerate(zip(written, lines)):
        record = json.loads(line)
        assert list(record) == ["linex_index", "features"]
        assert all(list(f) == ["token", "layers"] for f in record["features"])
        assert all(list(layer) == ["index", "values"] for f in record["features"] for layer in f["layers"])
        tokens = [f["token"] for f in record["features"]]
        feature = ef.convert_example(ef.parse_line(text, unique_id), _tokenizer(minilm_dir), 128)
        assert tokens == feature.tokens
        with torch.inference_mode():
            layers, _ = model(torch.tensor([feature.input_ids]), torch.tensor([feature.segment_ids]),
                              torch.ones(1, len(tokens), dtype=torch.long))
        assert line == original_line(unique_id, tokens, [layer[0] for layer in layers], [-1, -2])


def _tokenizer(minilm_dir, lower=True):
    import tokenization
    return tokenization.FullTokenizer(str(minilm_dir / "vocab.txt"), do_lower_case=lower)


def test_fast_formatting_is_the_text_json_dumps_gives_pythons_round():
    """The numpy formatter against the original's json.dumps([round(x.item(), 6) ...])."""
    rng = np.random.default_rng(0)
    edge_cases = [0.0, -0.0, 5e-7, -5e-7, 4e-7, -6e-7, 1e-6, -1e-6, 1e-5, 1.5e-5, -2e-5, 9.9e-5, 9.95e-5,
                  1e-4, -1e-4, 0.00012, 2.0, -3.0, 10.0, 100.0, 1000.5, 9998.999, -9998.25, 0.1, 0.5]
    values = np.concatenate([rng.normal(0, 1, 200_000), rng.normal(0, 1e-5, 20_000),
                             rng.normal(0, 1e-3, 20_000), rng.uniform(-9998, 9998, 20_000),
                             np.arange(-1024, 1024) / 128.0,  # exact ties at the 7th decimal, e.g. 1/128
                             edge_cases]).astype(np.float32)
    values = values[: len(values) // 16 * 16].reshape(-1, 16)
    fast = ef.format_value_rows(values)
    expected = [json.dumps([round(x.item(), 6) for x in row])[1:-1] for row in values]
    mismatches = [(got, want) for got, want in zip(fast, expected) if got != want]
    assert not mismatches, mismatches[:3]


def test_values_out_of_the_fast_range_use_json(minilm_dir):
    feature = ef.convert_example(ef.parse_line("tiny ||| test", 7), _tokenizer(minilm_dir), 128)
    rng = np.random.default_rng(1)
    layers = rng.normal(0, 1, (2, len(feature.tokens), 5)).astype(np.float32)
    for special in (None, 12345.678, float("nan"), float("-inf")):
        if special is not None:
            layers[1, 2, 3] = special
        # layers[j] holds layer_indexes[j]: as a full list, [-1] is layers[0] and [-2] is layers[1].
        all_layers = [torch.from_numpy(layers[1]), torch.from_numpy(layers[0])]
        expected = original_line(7, feature.tokens, all_layers, [-1, -2])
        assert ef.format_example(feature, layers, [-1, -2]) == expected


def test_output_follows_input_order_with_length_grouping(minilm_dir, tmp_path, reference, hf_tokenizers,
                                                         monkeypatch):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    lines = [" ".join(words[: (7 * k) % 12 + 1]) for k in range(9)]  # lengths 1, 8, 3, 10, 5, 12, 7, 2, 9
    lines[4] = f"{lines[4]} ||| {lines[1]}"
    order = [f.guid for batch in ef.length_grouped_batches(
        [ef.convert_example(ef.parse_line(t, k), _tokenizer(minilm_dir), 128) for k, t in enumerate(lines)], 2)
        for f in batch]
    assert order != sorted(order), "the inputs must be processed out of order"
    # A chunk of one batch of 2: the reorder buffer must never exceed the chunk.
    monkeypatch.setattr(ef, "CHUNK_BATCHES", 1)
    pending_sizes = []
    original_add = ef.OrderedLineWriter.add

    def recording_add(self, unique_id, line):
        pending_sizes.append(len(self.pending) + 1)
        return original_add(self, unique_id, line)

    monkeypatch.setattr(ef.OrderedLineWriter, "add", recording_add)
    code, output = run_main(minilm_dir, tmp_path, lines, "--batch_size", "2", "--layers", "-1")
    assert code == 0 and max(pending_sizes) <= 2
    monkeypatch.setattr(ef, "CHUNK_BATCHES", 64)
    code, grouped = run_main(minilm_dir, tmp_path, lines, "--batch_size", "2", "--layers", "-1", name="g.jsonl")
    assert code == 0 and max(pending_sizes[9:]) > 2  # one chunk: out-of-order lines were buffered
    singles = [k for k, line in enumerate(lines) if " ||| " not in line]
    expected = dict(zip(singles, reference_layers(reference, hf_tokenizers[True],
                                                  [split_line(lines[k]) for k in singles])))
    expected[4] = reference_layers(reference, hf_tokenizers[True], [split_line(lines[4])])[0]
    for path in (output, grouped):
        records = read_output(path)
        assert [r["linex_index"] for r in records] == list(range(len(lines)))
        for k, record in enumerate(records):
            assert_matches(record, *expected[k], [-1])


def test_grouping_windows_respect_the_example_and_token_budgets():
    features = [glue.InputFeatures([0] * n, [0] * n, tokens=["t"] * n, guid=k)
                for k, n in enumerate([5, 3, 4, 2, 6, 1, 1])]
    windows = list(ef.grouping_windows(features, max_examples=3, max_tokens=9))
    assert [[f.guid for f in w] for w in windows] == [[0, 1], [2, 3], [4, 5, 6]]
    # One example longer than the budget still forms a window of its own.
    assert [len(w) for w in ef.grouping_windows(features[:1], max_examples=3, max_tokens=2)] == [1]


def test_ordered_writer_writes_as_soon_as_the_prefix_is_complete():
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

    writer = ef.OrderedLineWriter(Stream())
    assert writer.add(2, "c") == 0 and writer.add(0, "a") == 1 and lines == ["a\n"]
    assert writer.add(1, "b") == 2 and lines == ["a\n", "b\n", "c\n"] and not writer.pending


# ---------------------------------------------------------------------------------------
# Options: lower-casing, task adapters
# ---------------------------------------------------------------------------------------

def test_no_do_lower_case_keeps_case(minilm_dir, tmp_path, hf_tokenizers):
    lines = ["Hello World from Café Zürich", "ALL CAPS ||| Mixed Case"]
    code, lowered = run_main(minilm_dir, tmp_path, lines, "--layers", "-1", name="lower.jsonl")
    assert code == 0
    code, cased = run_main(minilm_dir, tmp_path, lines, "--layers", "-1", "--no_do_lower_case", name="cased.jsonl")
    assert code == 0
    for lower, records in ((True, read_output(lowered)), (False, read_output(cased))):
        for record, line in zip(records, lines):
            encoding = hf_tokenizers[lower](*split_line(line))
            assert [f["token"] for f in record["features"]] == hf_tokenizers[lower].convert_ids_to_tokens(
                encoding["input_ids"])
    assert read_output(lowered)[0]["features"] != read_output(cased)[0]["features"]


@pytest.fixture(scope="module")
def pals_checkpoint(minilm_dir, tmp_path_factory):
    """A BertForMultiTask PALs checkpoint (3 tasks) and its config file without num_tasks."""
    folder = tmp_path_factory.mktemp("pals")
    config_json = json.loads((minilm_dir / "config.json").read_text())
    config_json.update(mult=True, pals=True, hidden_size_aug=48)
    config_file = folder / "pals_config.json"
    config_file.write_text(json.dumps(config_json))  # num_tasks left out, like configs/pals_config.json
    torch.manual_seed(0)
    model = BertForMultiTask(BertConfig.from_json_file(config_file).replace(num_tasks=3), [2, 3, 1])
    load_pretrained_weights(model, minilm_dir)  # shared BERT from MiniLM, PALs randomly initialised
    checkpoint = folder / "multitask.bin"
    torch.save(model.state_dict(), checkpoint)
    return config_file, checkpoint, model.bert.eval()


def test_task_id_writes_the_adapted_models_layers(minilm_dir, tmp_path, pals_checkpoint):
    config_file, checkpoint, bert = pals_checkpoint
    lines = ["Adapters change the hidden states.", "Per task ||| projected attention"]
    results = {}
    for task in (1, 2):
        code, output = run_main(minilm_dir, tmp_path, lines, "--task_id", task, "--layers=-1,-6",
                                config=config_file, checkpoint=checkpoint, name=f"task{task}.jsonl")
        assert code == 0
        results[task] = read_output(output)
        for record, line in zip(results[task], lines):
            feature = ef.convert_example(ef.parse_line(line, 0), _tokenizer(minilm_dir), 128)
            with torch.inference_mode():
                layers, _ = bert(torch.tensor([feature.input_ids]), torch.tensor([feature.segment_ids]), i=task)
            assert_matches(record, feature.tokens, torch.stack(layers)[:, 0], [-1, -6])
    first = torch.tensor(results[1][0]["features"][0]["layers"][0]["values"])
    second = torch.tensor(results[2][0]["features"][0]["layers"][0]["values"])
    assert (first - second).abs().max() > 1e-4, "tasks must differ, or the test proves nothing"


def test_task_id_is_a_name_or_an_index_in_the_all_order(minilm_dir, tmp_path, pals_checkpoint, capsys):
    """Issue 23, item 9: --task_id means what run_multi_task.py's does (a task name, or its
    index in the 'all' order), looked up in the tasks.json beside a run's checkpoint;
    without one the checkpoint's tasks are taken in the 'all' order."""
    config_file, checkpoint, _ = pals_checkpoint
    lines = ["Adapters change the hidden states."]
    outputs = {}
    for name, task_id in (("position1", 1), ("mrpc", "mrpc"), ("MRPC", "MRPC")):
        code, output = run_main(minilm_dir, tmp_path, lines, "--task_id", task_id, "--layers=-1",
                                config=config_file, checkpoint=checkpoint, name=f"{name}.jsonl")
        assert code == 0
        outputs[name] = output.read_text()
    assert outputs["position1"] == outputs["mrpc"] == outputs["MRPC"]  # bare: 'all' order, mrpc is 1
    # A run folder's checkpoint: its tasks.json gives the order (here rte, mnli, sts).
    run = tmp_path / "run"
    run.mkdir()
    (run / "best_model.pth").symlink_to(checkpoint)
    (run / "tasks.json").write_text(json.dumps([{"name": "rte", "num_labels": 2}, {"name": "mnli", "num_labels": 3},
                                                {"name": "sts", "num_labels": 1}]))
    for task_id in ("mnli", 2, "MNLI"):  # mnli is 2 in the 'all' order, position 1 in this run
        code, output = run_main(minilm_dir, tmp_path, lines, "--task_id", task_id, "--layers=-1", config=config_file,
                                checkpoint=run / "best_model.pth", name=f"run-{task_id}.jsonl")
        assert code == 0
        assert output.read_text() == outputs["position1"]
    code, output = run_main(minilm_dir, tmp_path, lines, "--task_id", "cola", config=config_file,
                            checkpoint=run, name="cola.jsonl")
    assert code == 2 and "--task_id cola (cola): the checkpoint's tasks are rte, mnli, sts" in last_error(capsys)
    code, output = run_main(minilm_dir, tmp_path, lines, config=config_file, checkpoint=run, name="none.jsonl")
    assert code == 2 and "choose one with --task_id (rte, mnli, sts)" in last_error(capsys)


def test_task_id_errors(minilm_dir, tmp_path, pals_checkpoint, capsys):
    config_file, checkpoint, _ = pals_checkpoint
    code, output = run_main(minilm_dir, tmp_path, ["x"], config=config_file, checkpoint=checkpoint)
    assert code == 2 and "choose one with --task_id (a task name or its index in the 'all' order: 0..2)" in \
        last_error(capsys)
    code, _ = run_main(minilm_dir, tmp_path, ["x"], "--task_id", "nope", config=config_file, checkpoint=checkpoint)
    assert code == 2 and "--task_id nope: task id must be a task name or an integer" in last_error(capsys)
    code, _ = run_main(minilm_dir, tmp_path, ["x"], "--task_id", 3, config=config_file, checkpoint=checkpoint)
    assert code == 2 and "--task_id 3 is out of range" in last_error(capsys)
    # An adapter config with a checkpoint that has no adapters would write random features.
    code, _ = run_main(minilm_dir, tmp_path, ["x"], "--task_id", 0, config=config_file)
    assert code == 2 and "task-specific" in last_error(capsys)
    assert not output.exists()


# ---------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, no output file
# ---------------------------------------------------------------------------------------

def last_error(capsys):
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def assert_clean_failure(code, output, capsys, *fragments):
    message = last_error(capsys)
    assert code == 2
    for fragment in fragments:
        assert fragment in message, message
    assert not output.exists()
    assert not [p for p in output.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_input_file(minilm_dir, tmp_path, capsys):
    code, output = run_main(minilm_dir, tmp_path, None)
    assert_clean_failure(code, output, capsys, str(tmp_path / "input.txt"), "not found")


@pytest.mark.parametrize("layers, fragment", [("6", "index 6 is out of range"), ("-7", "index -7 is out of range"),
                                              ("-1,x", "'x' is not an integer")])
def test_bad_layer_index(minilm_dir, tmp_path, capsys, layers, fragment):
    code, output = run_main(minilm_dir, tmp_path, ["text"], f"--layers={layers}")
    assert_clean_failure(code, output, capsys, "--layers", fragment)


def test_max_seq_length_over_position_embeddings(minilm_dir, tmp_path, capsys):
    code, output = run_main(minilm_dir, tmp_path, ["text"], "--max_seq_length", "513")
    assert_clean_failure(code, output, capsys, "--max_seq_length 513", "max_position_embeddings (512)")


def test_non_utf8_line_is_named(minilm_dir, tmp_path, capsys):
    input_file = tmp_path / "input.txt"
    input_file.write_bytes("first line\nsecond ||| line\nbad \xff byte\n".encode("latin-1"))
    code, output = run_main(minilm_dir, tmp_path, None)
    assert_clean_failure(code, output, capsys, f"{input_file}:3:", "not valid UTF-8")


def test_a_crash_leaves_no_partial_output(minilm_dir, tmp_path, monkeypatch):
    calls = []

    def failing_format(feature, layers, layer_indexes):
        calls.append(feature.guid)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return "{}"

    monkeypatch.setattr(ef, "format_example", failing_format)
    output = tmp_path / "out.jsonl"
    output.write_text("previous run\n")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_main(minilm_dir, tmp_path, ["a", "b", "c", "d"], "--batch_size", "1")
    assert output.read_text() == "previous run\n"  # untouched, and no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt", "out.jsonl"]


def test_reading_handles_line_endings_and_blank_lines(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"  one  \r\ntwo ||| three\rfour\n\nlast")
    examples = list(ef.read_examples(str(path)))
    assert [(e.guid, e.text_a, e.text_b) for e in examples] == [
        (0, "one", None), (1, "two", "three"), (2, "four", None), (3, "", None), (4, "last", None)]
    assert ef.count_examples(str(path)) == 5
    # Blank lines at the end are no examples (issue 23, item 5); between examples they
    # stay one each, as the original wrote them, so linex_index keeps following the lines.
    path.write_bytes(b"one\n\ntwo\n\n  \n")
    assert [(e.guid, e.text_a) for e in ef.read_examples(str(path))] == [(0, "one"), (1, ""), (2, "two")]


def test_features_come_from_glues_builder(minilm_dir):
    """One example/feature type and one builder for training and extraction."""
    assert ef.InputExample is glue.InputExample and ef.InputFeatures is glue.InputFeatures
    tokenizer = _tokenizer(minilm_dir)
    example = ef.parse_line("one two three four five ||| six seven", 4)
    feature = ef.convert_example(example, tokenizer, 8)
    [training] = glue.convert_examples_to_features([glue.InputExample("x", example.text_a, example.text_b, "1")],
                                                   "mrpc", tokenizer, 8)
    assert (feature.input_ids, feature.segment_ids) == (training.input_ids, training.segment_ids)
    assert feature.tokens == ["[CLS]", "one", "two", "three", "[SEP]", "six", "seven", "[SEP]"]
    assert (feature.guid, feature.label_id) == (4, None)
    assert (training.tokens, training.guid, training.label_id) == (None, None, 1)  # training keeps no tokens


def test_the_originals_field_names_still_work(minilm_dir, tmp_path):
    """Code written against the original's extract_features reads an example's
    unique_id and a feature's unique_id, input_type_ids and input_mask."""
    path = tmp_path / "input.txt"
    path.write_text("one two ||| three\nfour\n", encoding="utf-8")
    examples = list(ef.read_examples(str(path)))
    assert [e.unique_id for e in examples] == [0, 1]
    feature = ef.convert_example(examples[0], _tokenizer(minilm_dir), 16)
    assert feature.tokens == ["[CLS]", "one", "two", "[SEP]", "three", "[SEP]"]
    assert feature.unique_id == 0
    assert feature.input_type_ids == [0, 0, 0, 0, 1, 1]
    assert feature.input_mask == [1] * 6
    examples[1].unique_id = 7  # the aliases are the fields themselves
    assert examples[1].guid == 7 and ef.InputExample(3, "a").unique_id == 3


def test_errors_are_the_projects_error_classes(tmp_path):
    from errors import DataError, UsageError
    with pytest.raises(DataError, match="input file not found"):
        ef.count_examples(str(tmp_path / "absent.txt"))
    with pytest.raises(UsageError, match="--layers: index 6 is out of range"):
        ef.parse_layers("6", 6)
    with pytest.raises(UsageError, match="output folder"):
        with ef.atomic_text_output(str(tmp_path / "absent" / "out.jsonl")):
            pass
    with pytest.raises(UsageError, match="is a folder"):
        with ef.atomic_text_output(str(tmp_path)):
            pass
    assert not hasattr(ef, "InputError")


def test_bf16_autocast_runs_close_to_fp32(minilm_dir, tmp_path):
    code, fp32 = run_main(minilm_dir, tmp_path, SINGLES, "--layers", "-1", name="fp32.jsonl")
    assert code == 0
    code, bf16 = run_main(minilm_dir, tmp_path, SINGLES, "--layers", "-1", "--bf16", name="bf16.jsonl")
    assert code == 0
    for full, half in zip(read_output(fp32), read_output(bf16)):
        assert [f["token"] for f in full["features"]] == [f["token"] for f in half["features"]]
        a = torch.tensor([f["layers"][0]["values"] for f in full["features"]])
        b = torch.tensor([f["layers"][0]["values"] for f in half["features"]])
        difference = (a - b).abs().max().item()
        assert 0 < difference < 0.1  # bfloat16 has 8 bits of mantissa: close, but not equal
