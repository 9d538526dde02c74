"""convert_tf_checkpoint_to_pytorch.py: Google TF checkpoints -> our state dicts.

Real checkpoints: one written here in Google's layout from the MiniLM weights (with
Adam slots, global_step and pre-training heads), and the tiny one written by Google's
own BERT code. TensorFlow is imported once for the module (it is slow to import).
"""
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
import torch

import convert_tf_checkpoint_to_pytorch as convert
from checkpointing import load_pretrained_weights, read_state_dict
from modeling import BertConfig, BertForMultiTask, BertModel

SCRIPT = "convert_tf_checkpoint_to_pytorch.py"

SENTENCE_PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on a rug."),
    ("Stocks fell sharply on Monday after the announcement.", "Markets dropped."),
    ("He said he would come.", "He didn't come, although he had promised to be there early."),
]

# Google's names inside one encoder layer -> ours, and whether the tensor is transposed.
# Written out by hand (not derived from the converter) as the independent reference.
LAYER_NAMES = [
    ("attention/self/query/kernel", "attention.self.query.weight", True),
    ("attention/self/query/bias", "attention.self.query.bias", False),
    ("attention/self/key/kernel", "attention.self.key.weight", True),
    ("attention/self/key/bias", "attention.self.key.bias", False),
    ("attention/self/value/kernel", "attention.self.value.weight", True),
    ("attention/self/value/bias", "attention.self.value.bias", False),
    ("attention/output/dense/kernel", "attention.output.dense.weight", True),
    ("attention/output/dense/bias", "attention.output.dense.bias", False),
    ("attention/output/LayerNorm/gamma", "attention.output.LayerNorm.gamma", False),
    ("attention/output/LayerNorm/beta", "attention.output.LayerNorm.beta", False),
    ("intermediate/dense/kernel", "intermediate.dense.weight", True),
    ("intermediate/dense/bias", "intermediate.dense.bias", False),
    ("output/dense/kernel", "output.dense.weight", True),
    ("output/dense/bias", "output.dense.bias", False),
    ("output/LayerNorm/gamma", "output.LayerNorm.gamma", False),
    ("output/LayerNorm/beta", "output.LayerNorm.beta", False),
]
OUTER_NAMES = [
    ("bert/embeddings/word_embeddings", "embeddings.word_embeddings.weight", False),
    ("bert/embeddings/position_embeddings", "embeddings.position_embeddings.weight", False),
    ("bert/embeddings/token_type_embeddings", "embeddings.token_type_embeddings.weight", False),
    ("bert/embeddings/LayerNorm/gamma", "embeddings.LayerNorm.gamma", False),
    ("bert/embeddings/LayerNorm/beta", "embeddings.LayerNorm.beta", False),
    ("bert/pooler/dense/kernel", "pooler.dense.weight", True),
    ("bert/pooler/dense/bias", "pooler.dense.bias", False),
]


def google_name_table(num_layers):
    """Every (Google name, our key, transposed) of a BERT with num_layers layers."""
    table = list(OUTER_NAMES)
    for layer in range(num_layers):
        table += [(f"bert/encoder/layer_{layer}/{google}", f"encoder.layer.{layer}.{ours}", transposed)
                  for google, ours, transposed in LAYER_NAMES]
    return table


# ---------------------------------------------------------------------------------------
# Writing Google-layout checkpoints
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def write_tf_checkpoint(tf, prefix, variables):
    """Save {name: array} under exactly these names, as Google's tf.compat.v1 code did."""
    saver = tf.compat.v1.train.Saver(var_list={name: tf.Variable(value) for name, value in variables.items()})
    saver.save(sess=None, save_path=str(prefix), write_meta_graph=False)
    return str(prefix)


def with_training_state(variables, rng):
    """Add what a pre-training checkpoint holds besides the model: Adam slots and global_step."""
    result = dict(variables)
    for name, value in variables.items():
        result[name + "/adam_m"] = rng.normal(0, 1e-3, value.shape).astype(np.float32)
        result[name + "/adam_v"] = rng.random(value.shape, dtype=np.float32) * 1e-6
    result["global_step"] = np.array(1000, dtype=np.int64)
    return result


def minilm_google_variables(minilm_dir, rng):
    """The MiniLM weights under Google's names and layouts, plus the pre-training heads."""
    hf = read_state_dict(minilm_dir)
    config = json.loads((minilm_dir / "config.json").read_text())
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    # HF keys of the table's weights: LayerNorm weight/bias instead of gamma/beta.
    variables = {}
    for google, ours, transposed in google_name_table(config["num_hidden_layers"]):
        hf_key = ours.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        array = hf[hf_key].numpy()
        variables[google] = np.ascontiguousarray(array.T if transposed else array)  # TF kernels: [in, out]
    heads = {
        "cls/predictions/transform/dense/kernel": (hidden, hidden),
        "cls/predictions/transform/dense/bias": (hidden,),
        "cls/predictions/transform/LayerNorm/gamma": (hidden,),
        "cls/predictions/transform/LayerNorm/beta": (hidden,),
        "cls/predictions/output_bias": (vocab,),
        "cls/seq_relationship/output_weights": (2, hidden),
        "cls/seq_relationship/output_bias": (2,),
    }
    variables.update({name: rng.normal(0, 0.02, shape).astype(np.float32) for name, shape in heads.items()})
    return with_training_state(variables, rng)


@pytest.fixture(scope="module")
def minilm_tf_checkpoint(tf, minilm_dir, tmp_path_factory):
    variables = minilm_google_variables(minilm_dir, np.random.default_rng(0))
    prefix = write_tf_checkpoint(tf, tmp_path_factory.mktemp("minilm_tf") / "bert_model.ckpt", variables)
    return prefix, variables


@pytest.fixture(scope="module")
def tiny_variables(tf, google_tiny_ckpt_dir):
    """Every variable of Google's tiny checkpoint, for building broken variants."""
    prefix = str(google_tiny_ckpt_dir / "bert_model.ckpt")
    return {name: tf.train.load_variable(prefix, name) for name, _ in tf.train.list_variables(prefix)}


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=convert.__file__.rsplit(os.sep, 1)[0],
                          capture_output=True, text=True, env=env, timeout=300)


def error_line(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# ---------------------------------------------------------------------------------------
# MiniLM through the CLI: numerics against transformers
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted_minilm(minilm_tf_checkpoint, minilm_dir, tmp_path_factory):
    prefix, _ = minilm_tf_checkpoint
    output = tmp_path_factory.mktemp("converted") / "pytorch_model.bin"
    result = run_cli("--tf_checkpoint_path", prefix, "--bert_config_file", minilm_dir / "config.json",
                     "--pytorch_dump_path", output)
    assert result.returncode == 0, result.stderr
    return output, result.stderr


def test_cli_summary_counts_every_skipped_variable(converted_minilm, minilm_tf_checkpoint):
    _, variables = minilm_tf_checkpoint
    _, stderr = converted_minilm
    slots = sum(name.endswith(("/adam_m", "/adam_v")) for name in variables)
    heads = sum(name.startswith("cls/") and not name.endswith(("/adam_m", "/adam_v")) for name in variables)
    summaries = [line for line in stderr.splitlines() if "skipped" in line]
    assert len(summaries) == 1, stderr
    assert f"skipped {slots + heads + 1} variables" in summaries[0]
    assert f"{slots} optimizer slots" in summaries[0]
    assert f"{heads} pre-training heads" in summaries[0]
    assert "1 global_step" in summaries[0]
    assert f"converted {len(google_name_table(6))} tensors" in summaries[0]


def test_output_is_a_plain_state_dict_of_contiguous_float32(converted_minilm, minilm_dir):
    output, _ = converted_minilm
    state_dict = torch.load(output, map_location="cpu", weights_only=True)
    expected_keys = set(BertModel(BertConfig.from_json_file(minilm_dir / "config.json")).state_dict())
    assert set(state_dict) == expected_keys
    for key, tensor in state_dict.items():
        assert tensor.dtype == torch.float32 and tensor.is_contiguous(), key
    # Transposes of float32 are exact: every tensor equals the original weight bit for bit.
    hf = read_state_dict(minilm_dir)
    for key, tensor in state_dict.items():
        hf_key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        assert torch.equal(tensor, hf[hf_key]), key


def test_converted_weights_match_transformers_on_every_layer(converted_minilm, minilm_dir):
    transformers = pytest.importorskip("transformers")
    output, _ = converted_minilm
    ours = BertModel(BertConfig.from_json_file(minilm_dir / "config.json"))
    report = load_pretrained_weights(ours, output)
    assert not report.kept_init and not report.ignored
    ours.eval()
    reference = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    tokenizer = transformers.BertTokenizerFast(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    batch = tokenizer([a for a, _ in SENTENCE_PAIRS], [b for _, b in SENTENCE_PAIRS], padding=True,
                      return_tensors="pt")
    assert (batch["attention_mask"] == 0).any() and (batch["token_type_ids"] == 1).any()
    with torch.no_grad():
        layers, pooled = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        expected = reference(**batch, output_hidden_states=True)
    real = batch["attention_mask"].bool()  # padding rows are ill-conditioned in fp32 (see test_modeling)
    assert len(layers) == len(expected.hidden_states) - 1
    for index, (mine, theirs) in enumerate(zip(layers, expected.hidden_states[1:])):
        difference = (mine - theirs)[real].abs().max().item()
        assert difference <= 1e-5, f"layer {index}: {difference}"
    assert (pooled - expected.pooler_output).abs().max().item() <= 1e-5


def test_safetensors_output_holds_the_same_tensors(minilm_tf_checkpoint, converted_minilm, minilm_dir, tmp_path):
    from safetensors.torch import load_file
    prefix, _ = minilm_tf_checkpoint
    output = tmp_path / "model.safetensors"
    assert convert.main(["--tf_checkpoint_path", prefix, "--bert_config_file", str(minilm_dir / "config.json"),
                         "--pytorch_dump_path", str(output)]) == 0
    from_safetensors = load_file(str(output))  # fails unless the file really is safetensors
    from_torch = torch.load(converted_minilm[0], map_location="cpu", weights_only=True)
    assert from_safetensors.keys() == from_torch.keys()
    assert all(torch.equal(from_safetensors[k], from_torch[k]) for k in from_torch)
    model = BertModel(BertConfig.from_json_file(minilm_dir / "config.json"))
    assert not load_pretrained_weights(model, output).kept_init
    # --format overrides the extension; no temporary files are left behind.
    forced = tmp_path / "forced.bin"
    assert convert.main(["--tf_checkpoint_path", prefix, "--bert_config_file", str(minilm_dir / "config.json"),
                         "--pytorch_dump_path", str(forced), "--format", "safetensors"]) == 0
    assert load_file(str(forced)).keys() == from_torch.keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forced.bin", "model.safetensors"]


# ---------------------------------------------------------------------------------------
# Google's own tiny checkpoint
# ---------------------------------------------------------------------------------------

def test_google_tiny_checkpoint_every_tensor_matches_tensorflow(tf, google_tiny_ckpt_dir, tmp_path, caplog):
    output = tmp_path / "tiny.bin"
    with caplog.at_level(logging.INFO, logger="convert_tf_checkpoint_to_pytorch"):
        # The folder is accepted: it holds exactly one checkpoint.
        assert convert.main(["--tf_checkpoint_path", str(google_tiny_ckpt_dir),
                             "--bert_config_file", str(google_tiny_ckpt_dir / "bert_config.json"),
                             "--pytorch_dump_path", str(output)]) == 0
    state_dict = torch.load(output, map_location="cpu", weights_only=True)
    prefix = str(google_tiny_ckpt_dir / "bert_model.ckpt")
    table = google_name_table(num_layers=2)
    assert set(state_dict) == {ours for _, ours, _ in table}
    for google, ours, transposed in table:
        expected = tf.train.load_variable(prefix, google)
        expected = expected.T if transposed else expected
        assert np.array_equal(state_dict[ours].numpy(), expected), google
    names = [name for name, _ in tf.train.list_variables(prefix)]
    counts = Counter("slot" if n.endswith(("adam_m", "adam_v")) else "cls" if n.startswith("cls/")
                     else n if n == "global_step" else "model" for n in names)
    assert counts["model"] == len(table)
    summary = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(summary) == 1
    assert (f"skipped {counts['slot'] + counts['cls'] + 1} variables: {counts['slot']} optimizer slots"
            in summary[0])
    assert f"{counts['cls']} pre-training heads" in summary[0] and "1 global_step" in summary[0]
    model = BertModel(BertConfig.from_json_file(google_tiny_ckpt_dir / "bert_config.json"))
    assert not load_pretrained_weights(model, output).kept_init


def test_converted_tiny_checkpoint_feeds_extract_features(google_tiny_ckpt_dir, tmp_path):
    import extract_features
    converted = tmp_path / "tiny.safetensors"
    assert convert.main(["--tf_checkpoint_path", str(google_tiny_ckpt_dir / "bert_model.ckpt"),
                         "--bert_config_file", str(google_tiny_ckpt_dir / "bert_config.json"),
                         "--pytorch_dump_path", str(converted)]) == 0
    (tmp_path / "input.txt").write_text("all work and no play ||| makes jack a dull boy\n")
    assert extract_features.main([
        "--input_file", str(tmp_path / "input.txt"), "--output_file", str(tmp_path / "out.jsonl"),
        "--vocab_file", str(google_tiny_ckpt_dir / "vocab.txt"),
        "--bert_config_file", str(google_tiny_ckpt_dir / "bert_config.json"),
        "--init_checkpoint", str(converted), "--max_seq_length", "16", "--layers=-1,-2"]) == 0
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert [f["token"] for f in record["features"]] == (
        "[CLS] all work and no play [SEP] makes jack a dull boy [SEP]".split())
    assert all(len(layer["values"]) == 4 for f in record["features"] for layer in f["layers"])


def test_classifier_is_mapped_only_when_asked(tf, tiny_variables, google_tiny_ckpt_dir, tmp_path, caplog):
    rng = np.random.default_rng(1)
    variables = dict(tiny_variables)
    classifier = {"output_weights": rng.normal(size=(3, 4)).astype(np.float32),
                  "output_bias": rng.normal(size=(3,)).astype(np.float32)}
    variables.update(classifier)
    variables.update({f"{name}/adam_{slot}": np.zeros_like(value) for name, value in classifier.items()
                      for slot in "mv"})
    prefix = write_tf_checkpoint(tf, tmp_path / "finetuned.ckpt", variables)
    config_file = str(google_tiny_ckpt_dir / "bert_config.json")

    plain = tmp_path / "plain.bin"
    with caplog.at_level(logging.INFO, logger="convert_tf_checkpoint_to_pytorch"):
        assert convert.main(["--tf_checkpoint_path", prefix, "--bert_config_file", config_file,
                             "--pytorch_dump_path", str(plain)]) == 0
    assert "2 classifier variables" in caplog.text
    assert not any(k.startswith(("classifier", "bert.")) for k in torch.load(plain, weights_only=True))

    mapped = tmp_path / "multitask.bin"
    assert convert.main(["--tf_checkpoint_path", prefix, "--bert_config_file", config_file,
                         "--pytorch_dump_path", str(mapped), "--map_classifier", "1"]) == 0
    state_dict = torch.load(mapped, weights_only=True)
    assert torch.equal(state_dict["classifier.1.weight"], torch.from_numpy(classifier["output_weights"]))
    assert torch.equal(state_dict["classifier.1.bias"], torch.from_numpy(classifier["output_bias"]))
    assert all(k.startswith("bert.") for k in state_dict if not k.startswith("classifier."))
    # It loads into BertForMultiTask: the BERT weights and task 1's head.
    config = BertConfig.from_json_file(config_file).replace(num_tasks=2)
    model = BertForMultiTask(config, [2, 3])
    report = load_pretrained_weights(model, mapped)
    assert report.kept_init == ["classifier.0.weight", "classifier.0.bias"]
    assert torch.equal(model.classifier[1].weight, state_dict["classifier.1.weight"])
    assert torch.equal(model.bert.pooler.dense.weight, state_dict["bert.pooler.dense.weight"])


def test_adapter_config_converts_the_bert_weights_only(google_tiny_ckpt_dir, tmp_path):
    config = json.loads((google_tiny_ckpt_dir / "bert_config.json").read_text())
    config.update(mult=True, pals=True, hidden_size_aug=6)
    config_file = tmp_path / "pals_config.json"
    config_file.write_text(json.dumps(config))
    output = tmp_path / "pals.bin"
    assert convert.main(["--tf_checkpoint_path", str(google_tiny_ckpt_dir / "bert_model.ckpt"),
                         "--bert_config_file", str(config_file), "--pytorch_dump_path", str(output)]) == 0
    assert set(torch.load(output, weights_only=True)) == {ours for _, ours, _ in google_name_table(2)}
    # Loads into the adapter model and into the multi-task model the training script builds.
    model = BertModel(BertConfig.from_json_file(config_file))
    report = load_pretrained_weights(model, output)
    assert len(report.loaded) == len(google_name_table(2))
    assert report.kept_init and all("aug" in k or "mult" in k for k in report.kept_init)
    multitask = BertForMultiTask(BertConfig.from_json_file(config_file).replace(num_tasks=2), [2, 1])
    report = load_pretrained_weights(multitask, output)
    assert len(report.loaded) == len(google_name_table(2)) and not report.ignored


# ---------------------------------------------------------------------------------------
# Bad checkpoints: one line naming the variable, exit code 2
# ---------------------------------------------------------------------------------------

def convert_variant(tf, variables, google_tiny_ckpt_dir, tmp_path, capsys):
    prefix = write_tf_checkpoint(tf, tmp_path / "variant.ckpt", variables)
    output = tmp_path / "out.bin"
    code = convert.main(["--tf_checkpoint_path", prefix,
                         "--bert_config_file", str(google_tiny_ckpt_dir / "bert_config.json"),
                         "--pytorch_dump_path", str(output)])
    assert not output.exists()
    return code, error_line(capsys.readouterr().err)


def test_wrong_shape_names_the_variable_and_both_shapes(tf, tiny_variables, google_tiny_ckpt_dir, tmp_path, capsys):
    variables = dict(tiny_variables)
    variables["bert/encoder/layer_1/intermediate/dense/kernel"] = np.zeros((4, 12), np.float32)
    code, message = convert_variant(tf, variables, google_tiny_ckpt_dir, tmp_path, capsys)
    assert code == 2
    assert "'bert/encoder/layer_1/intermediate/dense/kernel'" in message
    assert "(4, 12)" in message and "(4, 16)" in message


def test_missing_variable_is_named(tf, tiny_variables, google_tiny_ckpt_dir, tmp_path, capsys):
    variables = {name: value for name, value in tiny_variables.items()
                 if not name.startswith("bert/encoder/layer_1/output/LayerNorm/gamma")}
    code, message = convert_variant(tf, variables, google_tiny_ckpt_dir, tmp_path, capsys)
    assert code == 2
    assert "'bert/encoder/layer_1/output/LayerNorm/gamma'" in message and "missing" in message


@pytest.mark.parametrize("unknown", ["bert/encoder/layer_0/attention/self/rotary/kernel",
                                     "bert/encoder/layer_2/output/dense/bias", "teacher/logits_scale"])
def test_unknown_variable_is_named(tf, tiny_variables, google_tiny_ckpt_dir, tmp_path, capsys, unknown):
    variables = dict(tiny_variables)
    variables[unknown] = np.zeros((4,), np.float32)
    code, message = convert_variant(tf, variables, google_tiny_ckpt_dir, tmp_path, capsys)
    assert code == 2
    assert f"'{unknown}'" in message and "maps to no BertModel weight" in message


def test_missing_checkpoint_path_fails_fast(google_tiny_ckpt_dir, tmp_path):
    missing = tmp_path / "nowhere" / "bert_model.ckpt"
    result = run_cli("--tf_checkpoint_path", missing, "--bert_config_file",
                     google_tiny_ckpt_dir / "bert_config.json", "--pytorch_dump_path", tmp_path / "out.bin")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {missing}: TensorFlow checkpoint not found (no {missing}.index)"
    assert not (tmp_path / "out.bin").exists()


def test_debug_shows_the_traceback(google_tiny_ckpt_dir, tmp_path):
    with pytest.raises(convert.ConversionError, match="checkpoint not found"):
        convert.main(["--tf_checkpoint_path", str(tmp_path / "none.ckpt"), "--bert_config_file",
                      str(google_tiny_ckpt_dir / "bert_config.json"), "--pytorch_dump_path",
                      str(tmp_path / "out.bin"), "--debug"])


def test_without_tensorflow_the_error_says_how_to_install_it(google_tiny_ckpt_dir, tmp_path, repo_root):
    """Runs the script where every import of tensorflow fails, as on a machine without it."""
    wrapper = textwrap.dedent("""
        import importlib.abc, runpy, sys

        class HideTensorFlow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    raise ModuleNotFoundError("No module named 'tensorflow'", name=name)
                return None

        sys.meta_path.insert(0, HideTensorFlow())
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    output = tmp_path / "out.bin"
    result = subprocess.run(
        [sys.executable, "-c", wrapper, str(repo_root / SCRIPT),
         "--tf_checkpoint_path", str(google_tiny_ckpt_dir / "bert_model.ckpt"),
         "--bert_config_file", str(google_tiny_ckpt_dir / "bert_config.json"), "--pytorch_dump_path", str(output)],
        cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "pip install tensorflow-cpu" in error_line(result.stderr)
    assert not output.exists()


def test_bad_config_is_reported_with_its_file(google_tiny_ckpt_dir, tmp_path, capsys):
    config_file = tmp_path / "bert_config.json"
    config_file.write_text('{"hidden_size": 4,\n "vocab_size": }')
    code = convert.main(["--tf_checkpoint_path", str(google_tiny_ckpt_dir / "bert_model.ckpt"),
                         "--bert_config_file", str(config_file), "--pytorch_dump_path", str(tmp_path / "o.bin")])
    assert code == 2
    assert error_line(capsys.readouterr().err).startswith(f"error: {config_file}:2:")


# ---------------------------------------------------------------------------------------
# The name mapping itself
# ---------------------------------------------------------------------------------------

def test_name_mapping_follows_the_table_both_ways():
    for google, ours, transposed in google_name_table(num_layers=12):
        assert convert.tf_name_to_key(google) == (ours, transposed)
        assert convert.key_to_tf_name(ours) == google
    assert convert.tf_name_to_key("cls/predictions/output_bias") is None
    assert convert.classifier_key("output_weights", 3) == "classifier.3.weight"


@pytest.mark.parametrize("name, reason", [
    ("bert/encoder/layer_3/output/dense/kernel/adam_m", "optimizer slots"),
    ("cls/predictions/output_bias/adam_v", "optimizer slots"),
    ("global_step", "global_step"),
    ("cls/seq_relationship/output_weights", "pre-training heads"),
    ("output_weights", "classifier variables"),
    ("bert/pooler/dense/bias", None),
])
def test_skip_reasons(name, reason):
    found = convert.skip_reason(name, map_classifier=False)
    assert (found is None) if reason is None else found.startswith(reason)
    if name == "output_weights":
        assert convert.skip_reason(name, map_classifier=True) is None
