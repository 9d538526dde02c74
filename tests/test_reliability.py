"""Reliability: untrusted checkpoints, bad input at every entry point, crashes, NaN, memory.

Everything here runs on a tiny model (hidden 32, 2 layers) with a small vocabulary built
from the demo GLUE data, so no pretrained weights are needed and steps take milliseconds.

The bad-input matrix (one test per case, each asserting the ``error:`` line and exit
status 2) is below, one parametrised test per script. Cases already tested elsewhere
are not repeated here:

    run_multi_task.py    a row with too few fields, an unknown dev label, a missing data
                         file, an unknown task, a non-empty output folder, bad flags
                         (--max_seq_length over max_position_embeddings, --h_aug not
                         divisible by 6, a missing --init_checkpoint, --resume without a
                         checkpoint), hidden_size not divisible by the heads, a vocabulary
                         without [CLS]: tests/test_run_multi_task.py
    extract_features.py  a missing or non-UTF-8 input file, bad --layers, --max_seq_length
                         over max_position_embeddings, --task_id errors:
                         tests/test_extract_features.py
    convert_tf_...py     a TF checkpoint path that does not exist, invalid JSON config,
                         TF variables missing, unknown or mis-shaped: tests/test_convert.py
    the loader           missing/mis-shaped/unexpected keys, a pickle that runs code
                         (modeling.load_pretrained_weights): tests/test_modeling.py
"""
import ast
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import checkpointing
import cli
import convert_tf_checkpoint_to_pytorch as convert
import demo_data
import extract_features
import modeling
import run_multi_task
import tokenization
import training

REPO_ROOT = Path(__file__).resolve().parent.parent
TASKS = "cola,sts"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# ---------------------------------------------------------------------------------------
# Tiny inputs
# ---------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def fresh_logging():
    """Each script configures logging as if it had the process to itself; in-process
    calls from several tests would otherwise log to an earlier test's captured stderr."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("glue")
    demo_data.write_demo_glue(folder, seed=3, scale=0.3)
    return folder


@pytest.fixture(scope="module")
def small_vocab(glue_dir, tmp_path_factory):
    """Every lower-cased word of the demo data plus the special tokens (about 1,000 ids):
    a tiny embedding table keeps optimizer steps cheap."""
    basic = tokenization.BasicTokenizer(do_lower_case=True)
    words = set()
    for path in glue_dir.rglob("*.tsv"):
        words.update(basic.tokenize(path.read_text(encoding="utf-8")))
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SPECIAL_TOKENS + sorted(words - set(SPECIAL_TOKENS))) + "\n", encoding="utf-8")
    return path


def vocab_size_of(vocab_file):
    return len(Path(vocab_file).read_text(encoding="utf-8").splitlines())


def tiny_config_dict(vocab_file, dropout=0.1, **flags):
    values = dict(vocab_size=vocab_size_of(vocab_file), hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                  mult=True, pals=True, hidden_size_aug=12)
    values.update(flags)
    return values


def write_json(path, value):
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def mtl_common(*, tasks=TASKS, steps=2, epochs=1):
    return ["--tasks", tasks, "--do_lower_case", "--max_seq_length", "32", "--train_batch_size", "4",
            "--eval_batch_size", "16", "--seed", "7", "--no_plot", "--do_train", "--do_eval",
            "--num_train_epochs", str(epochs), "--steps_per_epoch", str(steps), "--no_save_adapters",
            "--learning_rate", "1e-3"]


def one_error_line(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def assert_clean_error(code, capsys, fragments):
    """Exit status 2 and exactly one 'error:' line holding every fragment (no traceback)."""
    stderr = capsys.readouterr().err
    line = one_error_line(stderr)
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert str(fragment) in line, line


def tiny_bert_state(config_dict, seed=0):
    torch.manual_seed(seed)
    return modeling.BertModel(modeling.BertConfig.from_dict(config_dict)).state_dict()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, glue_dir, small_vocab):
    """A finished 2-step run: best model folder and a resumable checkpoints/last.pt."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_json(folder / "tiny_config.json", tiny_config_dict(small_vocab))
    out = folder / "out"
    argv = ["--data_dir", glue_dir, "--bert_config_file", config, "--vocab_file", small_vocab,
            "--output_dir", out, *mtl_common(), "--keep_last_checkpoint"]
    assert run_multi_task.main([str(a) for a in argv]) == 0
    return out, config


class Workspace:
    """Good inputs for every script, in a per-test folder; a case breaks one of them."""

    def __init__(self, root: Path, glue_dir: Path, small_vocab: Path, trained_run):
        self.root = root
        self.data = root / "glue"
        shutil.copytree(glue_dir, self.data)
        self.vocab = root / "vocab.txt"
        shutil.copyfile(small_vocab, self.vocab)
        self.config_dict = tiny_config_dict(small_vocab)
        self.config = write_json(root / "config.json", self.config_dict)
        self.out = root / "out"
        self.trained_out, _ = trained_run
        # extract_features: a plain BERT config and checkpoint
        self.bert_config_dict = tiny_config_dict(small_vocab, mult=False, pals=False)
        self.bert_config = write_json(root / "bert_config.json", self.bert_config_dict)
        self.bert_checkpoint = root / "bert.bin"
        torch.save(tiny_bert_state(self.bert_config_dict), self.bert_checkpoint)
        self.input = root / "input.txt"
        self.input.write_text("the first sentence\nthe second ||| and its pair\n", encoding="utf-8")
        self.output = root / "features.jsonl"

    def mtl_argv(self, extra):
        common = mtl_common()
        if "--do_predict" in map(str, extra):  # predict only: no training first
            common = [a for a in common if a not in ("--do_train", "--do_eval")]
        return [str(a) for a in ["--data_dir", self.data, "--bert_config_file", self.config, "--vocab_file",
                                 self.vocab, "--output_dir", self.out, *common, *extra]]

    def ef_argv(self, extra):
        return [str(a) for a in ["--input_file", self.input, "--output_file", self.output, "--vocab_file",
                                 self.vocab, "--bert_config_file", self.bert_config, "--init_checkpoint",
                                 self.bert_checkpoint, "--layers=-1", "--max_seq_length", "32", *extra]]

    def copy_trained(self, name="model"):
        target = self.root / name
        shutil.copytree(self.trained_out, target, ignore=shutil.ignore_patterns("train.log", ".lock"))
        return target


@pytest.fixture
def workspace(tmp_path, glue_dir, small_vocab, trained_run):
    return Workspace(tmp_path, glue_dir, small_vocab, trained_run)


def replace_line(path, number, transform):
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[number - 1] = transform(lines[number - 1])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def non_utf8_file(path, good_lines=2):
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(good_lines)) + b"caf\xe9 \xff\n")


def unreadable(path):
    """A path that exists but cannot be read as a file (tests run as root, where
    chmod 000 does not stop reading): a folder in its place."""
    if path.exists():
        path.unlink()
    path.mkdir()
    return path


# ---------------------------------------------------------------------------------------
# Bad input: run_multi_task.py
# ---------------------------------------------------------------------------------------

MTL_CASES = {}


def mtl_case(function):
    MTL_CASES[function.__name__] = function
    return function


@mtl_case
def data_dir_missing(w):
    w.data = w.root / "no_such_glue"
    return [], ["--data_dir", "no_such_glue", "no such folder"]


@mtl_case
def data_file_empty(w):
    path = w.data / "CoLA" / "train.tsv"
    path.write_text("")
    return [], [f"{path}: no examples"]


@mtl_case
def data_file_unreadable(w):
    path = unreadable(w.data / "STS-B" / "dev.tsv")
    return [], [f"{path}: cannot read"]


@mtl_case
def data_file_not_utf8(w):
    path = w.data / "STS-B" / "train.tsv"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"\t", b"\xff\t", 1)
    path.write_bytes(b"".join(lines))
    return [], [f"{path}:3:", "not valid UTF-8"]


@mtl_case
def data_row_too_many_fields(w):
    path = w.data / "CoLA" / "train.tsv"
    replace_line(path, 2, lambda line: line + "\tstray field")
    return [], [f"{path}:2:", "expected 4 fields, got 5"]


@mtl_case
def data_dev_row_too_few_fields(w):
    path = w.data / "STS-B" / "dev.tsv"
    replace_line(path, 3, lambda line: "\t".join(line.split("\t")[:5]))
    return [], [f"{path}:3:", "expected 10 fields, got 5"]


@mtl_case
def data_train_label_outside_label_set(w):
    path = w.data / "CoLA" / "train.tsv"
    replace_line(path, 4, lambda line: "\t".join([line.split("\t")[0], "2", *line.split("\t")[2:]]))
    return [], [f"{path}:4:", "unknown label '2' for cola"]


@mtl_case
def data_score_outside_range(w):
    path = w.data / "STS-B" / "train.tsv"
    replace_line(path, 2, lambda line: "\t".join(line.split("\t")[:-1] + ["7.5"]))
    return [], [f"{path}:2:", "bad STS-B score '7.5'"]


@mtl_case
def config_missing(w):
    w.config = w.root / "absent.json"
    return [], [f"{w.config}: config file not found"]


@mtl_case
def config_empty(w):
    w.config.write_text("")
    return [], [f"{w.config}:1: invalid JSON"]


@mtl_case
def config_invalid_json(w):
    w.config.write_text('{"vocab_size": 100,\n "hidden_size": 32,,}')
    return [], [f"{w.config}:2: invalid JSON"]


@mtl_case
def config_not_utf8(w):
    w.config.write_bytes(b'{"vocab_size": 100, "name": "caf\xe9"}')
    return [], [f"{w.config}: not UTF-8"]


@mtl_case
def config_unreadable(w):
    unreadable(w.config)
    return [], [f"{w.config}: cannot read config"]


@mtl_case
def config_not_an_object(w):
    w.config.write_text("[1, 2, 3]")
    return [], [f"{w.config}: a config must be a JSON object"]


@mtl_case
def config_mult_with_houlsby(w):
    write_json(w.config, {**w.config_dict, "houlsby": True})
    return [], [f"{w.config}:", "'mult' and 'houlsby' cannot both be true"]


@mtl_case
def config_bert_lay_top_without_top(w):
    write_json(w.config, {**w.config_dict, "bert_lay_top": True})
    return [], [f"{w.config}:", "'bert_lay_top' needs 'top'"]


@mtl_case
def config_pals_without_mult(w):
    write_json(w.config, {**w.config_dict, "mult": False})
    return [], [f"{w.config}:", "'pals' needs 'mult' or 'houlsby'"]


@mtl_case
def config_top_attention_width(w):
    write_json(w.config, {**w.config_dict, "mult": False, "pals": False, "top": True, "hidden_size_aug": 18})
    return [], [f"{w.config}:", "'hidden_size_aug' (18) must be divisible by 12"]


@mtl_case
def config_negative_size(w):
    write_json(w.config, {**w.config_dict, "intermediate_size": -64})
    return [], [f"{w.config}:", "'intermediate_size' must be a positive integer, got -64"]


@mtl_case
def config_other_activation(w):
    write_json(w.config, {**w.config_dict, "hidden_act": "relu"})
    return [], [f"{w.config}:", "'hidden_act' must be \"gelu\""]


@mtl_case
def config_vocab_size_below_vocabulary(w):
    write_json(w.config, {**w.config_dict, "vocab_size": 50})
    return [], [str(w.vocab), "vocab_size in", "is 50", "does not belong to this model"]


@mtl_case
def vocab_without_sep(w):
    w.vocab.write_text("\n".join(t for t in w.vocab.read_text().splitlines() if t != "[SEP]") + "\n")
    return [], [str(w.vocab), "has no [SEP] token"]


@mtl_case
def vocab_without_unk(w):
    w.vocab.write_text("\n".join(t for t in w.vocab.read_text().splitlines() if t != "[UNK]") + "\n")
    return [], [str(w.vocab), "has no [UNK] token"]


@mtl_case
def vocab_missing(w):
    w.vocab = w.root / "absent_vocab.txt"
    return [], ["vocabulary file not found", str(w.vocab)]


@mtl_case
def vocab_empty(w):
    w.vocab.write_text("")
    return [], ["vocabulary file is empty", str(w.vocab)]


@mtl_case
def vocab_not_utf8(w):
    non_utf8_file(w.vocab, good_lines=3)
    return [], ["not valid UTF-8", str(w.vocab), "line 4"]


@mtl_case
def vocab_unreadable(w):
    unreadable(w.vocab)
    return [], ["cannot read vocabulary file", str(w.vocab)]


def _init_checkpoint(w, change):
    state = tiny_bert_state(w.bert_config_dict)
    change(state)
    path = w.root / "init.bin"
    torch.save(state, path)
    return ["--init_checkpoint", path], path


@mtl_case
def init_checkpoint_missing_key(w):
    extra, path = _init_checkpoint(w, lambda s: s.pop("encoder.layer.1.output.dense.weight"))
    return extra, [str(path), "missing BERT weight 'bert.encoder.layer.1.output.dense.weight'"]


@mtl_case
def init_checkpoint_extra_key(w):
    extra, path = _init_checkpoint(w, lambda s: s.__setitem__("encoder.layer.2.output.dense.weight",
                                                              torch.zeros(32, 64)))
    return extra, [str(path), "unexpected tensor 'bert.encoder.layer.2.output.dense.weight'"]


@mtl_case
def init_checkpoint_misshaped_key(w):
    extra, path = _init_checkpoint(w, lambda s: s.__setitem__("pooler.dense.weight", torch.zeros(32, 31)))
    return extra, [str(path), "'bert.pooler.dense.weight' has shape (32, 31), the model expects (32, 32)"]


@mtl_case
def init_checkpoint_empty_file(w):
    path = w.root / "empty.bin"
    path.write_bytes(b"")
    return ["--init_checkpoint", path], [str(path), "refused or unreadable checkpoint"]


@mtl_case
def init_checkpoint_truncated(w):
    extra, path = _init_checkpoint(w, lambda s: None)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return extra, [str(path), "refused or unreadable checkpoint"]


@mtl_case
def init_checkpoint_not_a_state_dict(w):
    path = w.root / "list.bin"
    torch.save([1, 2, 3], path)
    return ["--init_checkpoint", path], [str(path), "holds no state dict of tensors"]


def _tampered_resume(w, change):
    (w.out / "checkpoints").mkdir(parents=True)
    path = w.out / "checkpoints" / "last.pt"
    state = torch.load(w.trained_out / "checkpoints" / "last.pt", weights_only=True)
    change(state)
    torch.save(state, path)
    return path


@mtl_case
def resume_checkpoint_truncated(w):
    path = _tampered_resume(w, lambda s: None)
    path.write_bytes(path.read_bytes()[:1000])
    return ["--resume"], [str(path), "refused or unreadable checkpoint"]


@mtl_case
def resume_checkpoint_is_a_plain_state_dict(w):
    path = _tampered_resume(w, lambda s: None)
    torch.save(tiny_bert_state(w.bert_config_dict), path)
    return ["--resume"], [str(path), "not a training checkpoint of this script"]


@mtl_case
def resume_checkpoint_missing_key(w):
    path = _tampered_resume(w, lambda s: s["model"].pop("bert.pooler.dense.bias"))
    return ["--resume"], [str(path), "lacks model tensor 'bert.pooler.dense.bias'"]


@mtl_case
def resume_checkpoint_extra_key(w):
    path = _tampered_resume(w, lambda s: s["model"].__setitem__("classifier.9.weight", torch.zeros(2, 32)))
    return ["--resume"], [str(path), "unexpected model tensor 'classifier.9.weight'"]


@mtl_case
def resume_checkpoint_misshaped_key(w):
    path = _tampered_resume(w, lambda s: s["model"].__setitem__("classifier.0.weight", torch.zeros(3, 32)))
    return ["--resume"], [str(path), "'classifier.0.weight' has shape (3, 32), the model expects (2, 32)"]


@mtl_case
def resume_checkpoint_missing_optimizer_state(w):
    path = _tampered_resume(w, lambda s: s.pop("optimizers"))
    return ["--resume"], [str(path), "not a training checkpoint of this script (no 'optimizers')"]


@mtl_case
def resume_with_other_tasks(w):
    path = _tampered_resume(w, lambda s: None)
    return ["--resume", "--tasks", "sts,cola"], [str(path), "was trained on tasks ['cola', 'sts']"]


@mtl_case
def resume_with_other_learning_rate(w):
    path = _tampered_resume(w, lambda s: None)
    return ["--resume", "--learning_rate", "2e-3"], [str(path), "--learning_rate 0.001, this run has 0.002"]


@mtl_case
def predict_checkpoint_missing(w):
    missing = w.root / "no_model"
    return ["--do_predict", "--predict_checkpoint", missing], [f"--predict_checkpoint {missing}: not found"]


@mtl_case
def predict_checkpoint_without_task_list(w):
    folder = w.copy_trained()
    (folder / "tasks.json").unlink()
    return ["--do_predict", "--predict_checkpoint", folder], [f"{folder}: incomplete model folder, missing tasks.json"]


@mtl_case
def predict_checkpoint_without_an_adapter_tensor(w):
    folder = w.copy_trained()
    state = torch.load(folder / "best_model.pth", weights_only=True)
    del state["classifier.0.weight"]  # would stay at its random initialisation
    torch.save(state, folder / "best_model.pth")
    return ["--do_predict", "--predict_checkpoint", folder / "best_model.pth"], [
        "best_model.pth", "'classifier.0.weight'"]


@mtl_case
def predict_checkpoint_misshaped_key(w):
    folder = w.copy_trained()
    state = torch.load(folder / "best_model.pth", weights_only=True)
    state["bert.embeddings.LayerNorm.gamma"] = torch.ones(31)
    torch.save(state, folder / "best_model.pth")
    return ["--do_predict", "--predict_checkpoint", folder], [
        "'bert.embeddings.LayerNorm.gamma' has shape (31,), the model expects (32,)"]


@mtl_case
def adapter_checkpoint_missing(w):
    missing = w.root / "cola.safetensors"
    return ["--init_checkpoint", w.bert_checkpoint, "--adapter_checkpoints", missing], [
        f"{missing}: adapter checkpoint not found"]


@mtl_case
def adapter_checkpoint_corrupt(w):
    corrupt = w.root / "cola.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    return ["--init_checkpoint", w.bert_checkpoint, "--adapter_checkpoints", corrupt], [
        f"{corrupt}: not a readable safetensors file"]


@mtl_case
def output_dir_is_a_file(w):
    w.out = w.root / "a_file"
    w.out.write_text("not a folder")
    return [], [f"--output_dir {w.out} exists and is not a folder"]


@mtl_case
def output_dir_used_by_another_run(w):
    w.out.mkdir()
    w._other_run = cli.OutputDirLock(w.out).acquire()  # what a live run holds
    return ["--overwrite_output_dir"], [str(w.out), "another run is using this output folder"]


@pytest.mark.parametrize("case", sorted(MTL_CASES))
def test_run_multi_task_bad_input(case, workspace, capsys):
    extra, fragments = MTL_CASES[case](workspace)
    code = run_multi_task.main(workspace.mtl_argv(extra))
    assert_clean_error(code, capsys, fragments)
    assert not list(workspace.root.rglob(f"*{checkpointing.TEMPORARY_SUFFIX}"))


def test_output_dir_of_a_run_that_failed_on_bad_input_can_be_reused(workspace, capsys):
    """The log (and lock) of a run that stopped on bad input do not make the folder 'busy'."""
    good_config = workspace.config.read_text()
    workspace.config.write_text("{")
    assert run_multi_task.main(workspace.mtl_argv([])) == 2
    assert {p.name for p in workspace.out.iterdir()} <= {".lock", "train.log"}
    workspace.config.write_text(good_config)
    assert run_multi_task.main(workspace.mtl_argv([])) == 0, capsys.readouterr().err[-2000:]


# ---------------------------------------------------------------------------------------
# Bad input: extract_features.py
# ---------------------------------------------------------------------------------------

EF_CASES = {}


def ef_case(function):
    EF_CASES[function.__name__] = function
    return function


@ef_case
def input_empty(w):
    w.input.write_text("")
    return [], [str(w.input), "input file is empty"]


@ef_case
def input_unreadable(w):
    unreadable(w.input)
    return [], [str(w.input), "cannot read input file"]


@ef_case
def config_missing_ef(w):
    w.bert_config = w.root / "absent.json"
    return [], [f"{w.bert_config}: config file not found"]


@ef_case
def config_empty_ef(w):
    w.bert_config.write_text("")
    return [], [f"{w.bert_config}:1: invalid JSON"]


@ef_case
def config_invalid_json_ef(w):
    w.bert_config.write_text('{"vocab_size": 100\n "hidden_size": 32}')
    return [], [f"{w.bert_config}:2: invalid JSON"]


@ef_case
def config_not_utf8_ef(w):
    w.bert_config.write_bytes(b'{"vocab_size": 100, "name": "\xff"}')
    return [], [f"{w.bert_config}: not UTF-8"]


@ef_case
def config_impossible_adapters_ef(w):
    write_json(w.bert_config, {**w.bert_config_dict, "houlsby": True, "mult": True})
    return [], [f"{w.bert_config}:", "'mult' and 'houlsby' cannot both be true"]


@ef_case
def config_heads_do_not_divide_ef(w):
    write_json(w.bert_config, {**w.bert_config_dict, "num_attention_heads": 5})
    return [], [f"{w.bert_config}:", "'hidden_size' (32) is not divisible by 'num_attention_heads' (5)"]


@ef_case
def config_vocab_size_below_vocabulary_ef(w):
    write_json(w.bert_config, {**w.bert_config_dict, "vocab_size": 50})
    return [], [str(w.vocab), "is 50", "does not belong to this model"]


@ef_case
def vocab_without_cls_ef(w):
    w.vocab.write_text("\n".join(t for t in w.vocab.read_text().splitlines() if t != "[CLS]") + "\n")
    return [], [str(w.vocab), "has no [CLS] token"]


@ef_case
def vocab_without_sep_ef(w):
    w.vocab.write_text("\n".join(t for t in w.vocab.read_text().splitlines() if t != "[SEP]") + "\n")
    return [], [str(w.vocab), "has no [SEP] token"]


@ef_case
def vocab_without_unk_ef(w):
    w.vocab.write_text("\n".join(t for t in w.vocab.read_text().splitlines() if t != "[UNK]") + "\n")
    return [], [str(w.vocab), "has no [UNK] token"]


@ef_case
def vocab_missing_ef(w):
    w.vocab = w.root / "absent_vocab.txt"
    return [], ["vocabulary file not found", str(w.vocab)]


@ef_case
def vocab_empty_ef(w):
    w.vocab.write_text("")
    return [], ["vocabulary file is empty", str(w.vocab)]


@ef_case
def vocab_not_utf8_ef(w):
    non_utf8_file(w.vocab, good_lines=5)
    return [], ["not valid UTF-8", str(w.vocab), "line 6"]


def _ef_checkpoint(w, change):
    state = tiny_bert_state(w.bert_config_dict)
    change(state)
    torch.save(state, w.bert_checkpoint)
    return [], w.bert_checkpoint


@ef_case
def checkpoint_missing_ef(w):
    w.bert_checkpoint = w.root / "absent.bin"
    return [], [f"{w.bert_checkpoint}: checkpoint not found"]


@ef_case
def checkpoint_missing_key_ef(w):
    extra, path = _ef_checkpoint(w, lambda s: s.pop("encoder.layer.0.attention.self.key.bias"))
    return extra, [str(path), "missing BERT weight 'encoder.layer.0.attention.self.key.bias'"]


@ef_case
def checkpoint_extra_key_ef(w):
    extra, path = _ef_checkpoint(w, lambda s: s.__setitem__("encoder.layer.5.output.dense.bias", torch.zeros(32)))
    return extra, [str(path), "unexpected tensor 'encoder.layer.5.output.dense.bias'"]


@ef_case
def checkpoint_misshaped_key_ef(w):
    extra, path = _ef_checkpoint(w, lambda s: s.__setitem__("embeddings.position_embeddings.weight",
                                                            torch.zeros(16, 32)))
    return extra, [str(path), "'embeddings.position_embeddings.weight' has shape (16, 32), the model expects (64, 32)"]


@ef_case
def checkpoint_empty_file_ef(w):
    w.bert_checkpoint.write_bytes(b"")
    return [], [str(w.bert_checkpoint), "refused or unreadable checkpoint"]


@ef_case
def checkpoint_truncated_ef(w):
    data = w.bert_checkpoint.read_bytes()
    w.bert_checkpoint.write_bytes(data[: len(data) // 3])
    return [], [str(w.bert_checkpoint), "refused or unreadable checkpoint"]


@ef_case
def checkpoint_safetensors_corrupt_ef(w):
    w.bert_checkpoint = w.root / "model.safetensors"
    w.bert_checkpoint.write_bytes(b"garbage")
    return [], [str(w.bert_checkpoint), "not a readable safetensors file"]


@ef_case
def output_folder_missing_ef(w):
    w.output = w.root / "no_such_folder" / "features.jsonl"
    return [], [str(w.output), "output folder", "does not exist"]


@ef_case
def output_is_a_folder_ef(w):
    w.output.mkdir()
    return [], [str(w.output), "is a folder"]


@ef_case
def batch_size_zero_ef(w):
    return ["--batch_size", "0"], ["--batch_size must be at least 1, got 0"]


@pytest.mark.parametrize("case", sorted(EF_CASES))
def test_extract_features_bad_input(case, workspace, capsys):
    extra, fragments = EF_CASES[case](workspace)
    code = extract_features.main(workspace.ef_argv(extra))
    assert_clean_error(code, capsys, fragments)
    assert not workspace.output.is_file()
    assert not list(workspace.root.rglob(f"*{checkpointing.TEMPORARY_SUFFIX}"))


def test_extract_features_runs_on_the_tiny_inputs(workspace):
    """The good inputs of the matrix work, so each case fails for its own reason."""
    assert extract_features.main(workspace.ef_argv([])) == 0
    assert len(workspace.output.read_text().splitlines()) == 2


# ---------------------------------------------------------------------------------------
# Bad input: convert_tf_checkpoint_to_pytorch.py
# ---------------------------------------------------------------------------------------

def convert_argv(tf_path, config, output, *extra):
    return ["--tf_checkpoint_path", str(tf_path), "--bert_config_file", str(config),
            "--pytorch_dump_path", str(output), *map(str, extra)]


CONVERT_CONFIG_CASES = {
    "config_missing": (None, "config file not found"),
    "config_empty": (b"", ":1: invalid JSON"),
    "config_not_utf8": (b'{"vocab_size": 15, "x": "\xfe"}', ": not UTF-8"),
    "config_not_an_object": (b'"bert"', ": a config must be a JSON object"),
    "config_impossible_size": (b'{"vocab_size": 15, "hidden_size": 4, "num_attention_heads": 3}',
                               "'hidden_size' (4) is not divisible by 'num_attention_heads' (3)"),
    "config_impossible_adapters": (b'{"vocab_size": 15, "hidden_size": 4, "num_attention_heads": 1, '
                                   b'"top": false, "bert_lay_top": true}', "'bert_lay_top' needs 'top'"),
}


@pytest.mark.parametrize("case", sorted(CONVERT_CONFIG_CASES))
def test_convert_bad_config(case, tmp_path, capsys):
    content, fragment = CONVERT_CONFIG_CASES[case]
    config = tmp_path / "bert_config.json"
    if content is not None:
        config.write_bytes(content)
    output = tmp_path / "out.bin"
    code = convert.main(convert_argv(tmp_path / "model.ckpt", config, output))
    assert_clean_error(code, capsys, [str(config), fragment])
    assert not output.exists()


def test_convert_config_unreadable(tmp_path, capsys):
    config = unreadable(tmp_path / "bert_config.json")
    code = convert.main(convert_argv(tmp_path / "model.ckpt", config, tmp_path / "out.bin"))
    assert_clean_error(code, capsys, [str(config), "cannot read config"])


def test_convert_folder_without_a_checkpoint(tmp_path, capsys, google_tiny_ckpt_dir):
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    code = convert.main(convert_argv(empty, google_tiny_ckpt_dir / "bert_config.json", tmp_path / "o.bin"))
    assert_clean_error(code, capsys, [str(empty), "must hold exactly one *.index file (found: none)"])


def test_convert_garbage_index_file(tmp_path, capsys, google_tiny_ckpt_dir):
    prefix = tmp_path / "bert_model.ckpt"
    Path(str(prefix) + ".index").write_bytes(b"this is not a TensorFlow checkpoint index" * 10)
    code = convert.main(convert_argv(prefix, google_tiny_ckpt_dir / "bert_config.json", tmp_path / "o.bin"))
    assert_clean_error(code, capsys, [str(prefix), "unreadable TensorFlow checkpoint"])
    assert not (tmp_path / "o.bin").exists()


def test_convert_output_folder_missing(tmp_path, capsys, google_tiny_ckpt_dir):
    output = tmp_path / "no_such_folder" / "model.bin"
    code = convert.main(convert_argv(google_tiny_ckpt_dir / "bert_model.ckpt",
                                     google_tiny_ckpt_dir / "bert_config.json", output))
    assert_clean_error(code, capsys, [str(output), "output folder", "does not exist"])


def test_convert_negative_classifier_task(tmp_path, capsys, google_tiny_ckpt_dir):
    code = convert.main(convert_argv(google_tiny_ckpt_dir / "bert_model.ckpt",
                                     google_tiny_ckpt_dir / "bert_config.json", tmp_path / "o.bin",
                                     "--map_classifier", "-1"))
    assert_clean_error(code, capsys, ["--map_classifier: task id must be >= 0, got -1"])


# ---------------------------------------------------------------------------------------
# --debug and BERT_PALS_DEBUG: the same in all three scripts
# ---------------------------------------------------------------------------------------

def _broken_call(script, w):
    """A call of each script that fails on a missing config, and the error type raised."""
    w.config = w.bert_config = w.root / "absent.json"
    if script == "run_multi_task":
        return run_multi_task.main, w.mtl_argv([])
    if script == "extract_features":
        return extract_features.main, w.ef_argv([])
    return convert.main, convert_argv(w.root / "m.ckpt", w.config, w.root / "o.bin")


@pytest.mark.parametrize("script", ["run_multi_task", "extract_features", "convert"])
@pytest.mark.parametrize("how", ["flag", "environment", "environment_off"])
def test_debug_shows_the_traceback_in_every_script(script, how, workspace, monkeypatch, capsys):
    main, argv = _broken_call(script, workspace)
    monkeypatch.delenv(cli.DEBUG_ENVIRONMENT_VARIABLE, raising=False)
    if how == "flag":
        argv = argv + ["--debug"]
    else:
        monkeypatch.setenv(cli.DEBUG_ENVIRONMENT_VARIABLE, "1" if how == "environment" else "0")
    if how == "environment_off":
        assert_clean_error(main(argv), capsys, ["config file not found"])
    else:
        with pytest.raises(modeling.ConfigError, match="config file not found"):
            main(argv)


# ---------------------------------------------------------------------------------------
# Untrusted checkpoints: a pickle that runs code, through every script
# ---------------------------------------------------------------------------------------

class RunsCodeOnLoad:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def write_crafted_checkpoint(path, marker):
    """A torch file whose only 'tensor' runs code when unpickled without weights_only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"embeddings.word_embeddings.weight": RunsCodeOnLoad(marker), "model": {}}, path)
    return path


def test_the_crafted_checkpoint_really_runs_code_when_unpickled(tmp_path):
    """The payload is live: a plain torch.load (weights_only=False) runs it. Without this
    the tests below could pass for the wrong reason."""
    marker = tmp_path / "code_ran"
    path = write_crafted_checkpoint(tmp_path / "evil.bin", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def _crafted_entry_point(entry, w, evil_file):
    """(main, argv, fragments) loading ``evil_file`` through one entry point."""
    if entry == "run_multi_task --init_checkpoint (file)":
        return run_multi_task.main, w.mtl_argv(["--init_checkpoint", evil_file]), [str(evil_file)]
    if entry == "run_multi_task --init_checkpoint (folder)":
        folder = w.root / "hf_model"
        folder.mkdir()
        shutil.copyfile(evil_file, folder / "pytorch_model.bin")
        return run_multi_task.main, w.mtl_argv(["--init_checkpoint", folder]), [str(folder / "pytorch_model.bin")]
    if entry == "run_multi_task --resume (checkpoints/last.pt)":
        last = w.out / "checkpoints" / "last.pt"
        last.parent.mkdir(parents=True)
        shutil.copyfile(evil_file, last)
        return run_multi_task.main, w.mtl_argv(["--resume"]), [str(last), "(posix.system) that would run code"]
    if entry == "run_multi_task --predict_checkpoint":
        folder = w.copy_trained()
        shutil.copyfile(evil_file, folder / "best_model.pth")
        return (run_multi_task.main, w.mtl_argv(["--do_predict", "--predict_checkpoint", folder]),
                [str(folder / "best_model.pth")])
    if entry == "run_multi_task --adapter_checkpoints":
        adapter = w.root / "cola.safetensors"
        shutil.copyfile(evil_file, adapter)
        return (run_multi_task.main, w.mtl_argv(["--init_checkpoint", w.bert_checkpoint, "--adapter_checkpoints",
                                                 adapter, "--tasks", "cola"]), [str(adapter), "safetensors"])
    if entry == "extract_features --init_checkpoint":
        w.bert_checkpoint = evil_file
        return extract_features.main, w.ef_argv([]), [str(evil_file)]
    if entry == "convert --tf_checkpoint_path (the pickle itself)":
        return (convert.main, convert_argv(evil_file, w.bert_config, w.root / "converted.bin"),
                [str(evil_file), "TensorFlow checkpoint not found"])
    if entry == "convert --tf_checkpoint_path (the pickle as its .index)":
        prefix = w.root / "bert_model.ckpt"
        shutil.copyfile(evil_file, str(prefix) + ".index")
        return (convert.main, convert_argv(prefix, w.bert_config, w.root / "converted.bin"),
                [str(prefix), "unreadable TensorFlow checkpoint"])
    raise AssertionError(entry)


CRAFTED_ENTRY_POINTS = [
    "run_multi_task --init_checkpoint (file)", "run_multi_task --init_checkpoint (folder)",
    "run_multi_task --resume (checkpoints/last.pt)", "run_multi_task --predict_checkpoint",
    "run_multi_task --adapter_checkpoints", "extract_features --init_checkpoint",
    "convert --tf_checkpoint_path (the pickle itself)", "convert --tf_checkpoint_path (the pickle as its .index)",
]


@pytest.mark.parametrize("entry", CRAFTED_ENTRY_POINTS)
def test_crafted_checkpoint_is_refused_by_every_entry_point(entry, workspace, capsys):
    marker = workspace.root / "code_ran"
    evil = write_crafted_checkpoint(workspace.root / "evil" / "evil.bin", marker)
    main, argv, fragments = _crafted_entry_point(entry, workspace, evil)
    code = main([str(a) for a in argv])
    if "safetensors" not in fragments and "TensorFlow" not in " ".join(fragments):
        fragments = fragments + ["refused or unreadable checkpoint (only plain tensors are loaded, never code)"]
    assert_clean_error(code, capsys, fragments)
    assert not marker.exists(), "the checkpoint's code ran"


def test_every_torch_load_in_the_repository_is_weights_only():
    """Static check: no torch.load without weights_only=True, no pickle.load outside tests."""
    offenders = []
    sources = []
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("venv", "site-packages")]
        sources += [Path(folder) / name for name in files if name.endswith(".py")]
    for path in sorted(sources):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            if owner == "torch" and node.func.attr == "load":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe and path.name != Path(__file__).name:
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: torch.load without weights_only=True")
            if owner == "pickle" and node.func.attr in ("load", "loads") and "tests" not in path.parts:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: pickle.{node.func.attr}")
    assert not offenders, "\n".join(offenders)


# ---------------------------------------------------------------------------------------
# Crashes: atomic files
# ---------------------------------------------------------------------------------------

def test_a_failing_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    checkpointing.atomic_torch_save({"step": torch.tensor(1)}, path)

    def half_then_crash(obj, destination):  # destination: the temporary file, opened for writing
        destination.write(b"PK\x03\x04 half a zip file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpointing.torch, "save", half_then_crash)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpointing.atomic_torch_save({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(checkpointing.safe_torch_load(path)["step"]) == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_sigkill_during_a_write_leaves_the_previous_file_and_cleanup_removes_the_rest(tmp_path):
    """SIGKILL in the middle of a write (nothing can clean up): the real name still holds
    the previous, complete file; the next run's remove_partial_files clears the rest."""
    path = tmp_path / "metrics.jsonl"
    path.write_text("previous\n")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        import checkpointing
        with checkpointing.atomic_path({str(path)!r}) as temporary:
            temporary.write_text("half of the new conte")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert path.read_text() == "previous\n"
    leftovers = [p for p in tmp_path.iterdir() if p != path]
    assert len(leftovers) == 1 and checkpointing.is_partial_file(leftovers[0])
    for name in (".notes.tmp", ".editor.swp.tmp", "metrics.jsonl.tmp"):  # other programs' files stay
        (tmp_path / name).write_text("not ours")
    assert checkpointing.remove_partial_files(tmp_path) == leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == [".editor.swp.tmp", ".notes.tmp", "metrics.jsonl",
                                                          "metrics.jsonl.tmp"]


def test_sigterm_during_feature_extraction_leaves_no_partial_output(workspace):
    workspace.input.write_text("".join(f"line {i} of a long input ||| its pair {i}\n" for i in range(200000)))
    workspace.output.write_text("the previous output\n")
    command = [sys.executable, str(REPO_ROOT / "extract_features.py"), *workspace.ef_argv(["--batch_size", "8"])]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not [p for p in workspace.root.iterdir() if checkpointing.is_partial_file(p)]:
        assert process.poll() is None and time.time() < deadline, "extraction did not start writing"
        time.sleep(0.05)
    time.sleep(random.uniform(0.1, 0.5))
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped: signal 15" in stderr
    assert workspace.output.read_text() == "the previous output\n"
    assert not [p for p in workspace.root.iterdir() if checkpointing.is_partial_file(p)]


# ---------------------------------------------------------------------------------------
# Crashes: SIGKILL and SIGTERM at a random step, then --resume
# ---------------------------------------------------------------------------------------

CHECKPOINT_EVERY = 25
STEPS_PER_EPOCH = 150
EPOCHS = 2


def kill_run_args(glue_dir, config, vocab, output_dir, *extra):
    return [str(a) for a in [
        "--data_dir", glue_dir, "--bert_config_file", config, "--vocab_file", vocab, "--output_dir", output_dir,
        "--tasks", "cola,sts,mnli", "--do_lower_case", "--max_seq_length", "32", "--train_batch_size", "8",
        "--eval_batch_size", "32", "--seed", "11", "--no_plot", "--do_train", "--do_eval", "--sample", "anneal",
        "--num_train_epochs", EPOCHS, "--steps_per_epoch", STEPS_PER_EPOCH, "--learning_rate", "1e-3",
        "--save_checkpoints_steps", CHECKPOINT_EVERY, "--no_save_adapters", "--keep_last_checkpoint", *extra]]


def run_script(args, **kwargs):
    """The training script in its own process, one thread (so all runs compute alike)."""
    command = [sys.executable, str(REPO_ROOT / "run_multi_task.py"), *args]
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO_ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), **kwargs)


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory, glue_dir, small_vocab):
    folder = tmp_path_factory.mktemp("kill")
    config = write_json(folder / "config.json", tiny_config_dict(small_vocab))  # dropout on: RNG state matters
    reference = folder / "uninterrupted"
    process = run_script(kill_run_args(glue_dir, config, small_vocab, reference))
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return folder, config, torch.load(reference / "checkpoints" / "last.pt", weights_only=True)


def _stop_at_a_random_step(process, output_dir, signum, rng):
    """Let a random number (2-7) of periodic checkpoints happen, wait a random fraction
    of the last checkpoint interval more, then send the signal."""
    last = output_dir / "checkpoints" / "last.pt"
    wanted = rng.randint(2, 7)
    seen, previous, times = 0, None, []
    deadline = time.time() + 300
    while seen < wanted:
        assert process.poll() is None, f"the run ended before the signal: {process.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no checkpoints appeared"
        try:
            stamp = last.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != previous:
            seen, previous = seen + 1, stamp
            times.append(time.monotonic())
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 1.0) * (times[-1] - times[-2]))
    process.send_signal(signum)


def _assert_no_partial_files(folder):
    partial = [p for p in Path(folder).rglob("*") if checkpointing.is_partial_file(p)]
    assert not partial, partial


def _assert_same_final_parameters(reference, output_dir):
    final = torch.load(output_dir / "checkpoints" / "last.pt", weights_only=True)
    assert final["global_step"] == reference["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert set(final["model"]) == set(reference["model"])
    for key, tensor in reference["model"].items():
        assert torch.equal(final["model"][key], tensor), key
    assert final["history"] == reference["history"]  # the same evaluations, metric for metric


@pytest.mark.slow  # an uninterrupted run, then a stopped and a resumed one, in subprocesses (about 20 s each)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_stop_at_a_random_step_then_resume_equals_an_uninterrupted_run(signum, kill_setup, glue_dir, small_vocab):
    folder, config, reference = kill_setup
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    output_dir = folder / f"stopped_{signum}_{seed}"
    process = run_script(kill_run_args(glue_dir, config, small_vocab, output_dir))
    _stop_at_a_random_step(process, output_dir, signum, rng)
    _, stderr = process.communicate(timeout=300)
    context = f"(random seed {seed})\n{stderr[-2000:]}"

    state = checkpointing.load_training_checkpoint(output_dir)  # complete, whatever the moment of the kill
    stopped_at = state["global_step"]
    assert 0 < stopped_at < EPOCHS * STEPS_PER_EPOCH, context
    if signum == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL, context
        # Only what happened since the last periodic (or end-of-epoch) checkpoint is lost.
        assert stopped_at % CHECKPOINT_EVERY == 0 or stopped_at % STEPS_PER_EPOCH == 0, context
    else:
        assert process.returncode == 128 + signal.SIGTERM, context
        assert "resume with --resume" in stderr, context
        _assert_no_partial_files(output_dir)  # SIGTERM: the run cleaned up after itself

    resumed = run_script(kill_run_args(glue_dir, config, small_vocab, output_dir, "--resume"))
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, f"(random seed {seed})\n{stderr[-3000:]}"
    assert f"resumed from step {stopped_at} " in stderr
    _assert_no_partial_files(output_dir)  # after a SIGKILL, the resumed run removed any leftover
    _assert_same_final_parameters(reference, output_dir)


# ---------------------------------------------------------------------------------------
# Numerical faults
# ---------------------------------------------------------------------------------------

def nan_run_args(glue_dir, config, vocab, output_dir, *extra):
    return [str(a) for a in [
        "--data_dir", glue_dir, "--bert_config_file", config, "--vocab_file", vocab, "--output_dir", output_dir,
        "--tasks", "cola,sts,mnli", "--do_lower_case", "--max_seq_length", "32", "--train_batch_size", "8",
        "--eval_batch_size", "32", "--seed", "5", "--no_plot", "--do_train", "--do_eval", "--sample", "rr",
        "--num_train_epochs", "3", "--steps_per_epoch", "4", "--learning_rate", "1e-3",
        "--save_checkpoints_steps", "0", "--keep_last_checkpoint", *extra]]


def inject_nan_loss_at_step(monkeypatch, step: int) -> None:
    """Fault injection from the test: the training loss of optimizer step ``step``
    (1-based, counted by the trainer, so also after --resume) becomes NaN just before
    the loop checks it, so the real detection path runs at a step the test chooses. An
    input crafted to give NaN cannot target a step (batches are reshuffled per pass and
    tasks are sampled)."""
    current = {"step": 0}
    train_step = training.Trainer.train_step
    forward = modeling.BertForMultiTask.forward

    def counting_train_step(self, task_id):
        current["step"] = self.global_step + 1
        return train_step(self, task_id)

    def nan_forward(self, *args, labels=None, **kwargs):
        output = forward(self, *args, labels=labels, **kwargs)
        if labels is not None and self.training and current["step"] == step:
            loss, logits = output
            return loss * float("nan"), logits
        return output

    monkeypatch.setattr(training.Trainer, "train_step", counting_train_step)
    monkeypatch.setattr(modeling.BertForMultiTask, "forward", nan_forward)


@pytest.fixture
def nan_setup(tmp_path, glue_dir, small_vocab):
    config = write_json(tmp_path / "config.json", tiny_config_dict(small_vocab))
    return tmp_path, lambda out, *extra: nan_run_args(glue_dir, config, small_vocab, out, *extra)


def test_nan_at_a_chosen_step_stops_with_step_and_task_and_keeps_the_best_model(nan_setup, monkeypatch, capsys):
    folder, args = nan_setup
    out = folder / "nan"
    # Step 6 = the second step of epoch 1 under round robin (cola, sts, mnli, cola | sts, mnli, ...).
    inject_nan_loss_at_step(monkeypatch, 6)
    code = run_multi_task.main(args(out))
    assert_clean_error(code, capsys, ["non-finite training loss at step 6 (epoch 1, task mnli)",
                                      "the best saved model is untouched",
                                      "the last checkpoint (step 4) continues with --resume"])
    best = json.loads((out / "eval_results.json").read_text())
    assert best["epoch"] == 0 and best["global_step"] == 4
    # The best model is the one saved after epoch 0, bit for bit, and nothing later.
    saved = torch.load(out / "best_model.pth", weights_only=True)
    epoch_0 = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert epoch_0["global_step"] == 4
    for key, tensor in epoch_0["model"].items():
        assert torch.equal(saved[key], tensor), key
    assert all(torch.isfinite(t).all() for t in saved.values())
    _assert_no_partial_files(out)

    # The error's advice works: resume from the last checkpoint, skipping such steps.
    code = run_multi_task.main(args(out, "--resume", "--skip_nonfinite_loss"))
    assert code == 0
    log = (out / "train.log").read_text()
    assert "non-finite training loss at step 6 (epoch 1, task mnli); skipping this step" in log
    final = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert final["global_step"] == 12
    assert all(torch.isfinite(t).all() for t in final["model"].values())


def test_nan_with_skip_skips_exactly_that_step(nan_setup, monkeypatch):
    folder, args = nan_setup
    inject_nan_loss_at_step(monkeypatch, 2)
    assert run_multi_task.main(args(folder / "skip", "--skip_nonfinite_loss")) == 0
    state = torch.load(folder / "skip" / "checkpoints" / "last.pt", weights_only=True)
    optimizer_steps = {int(s["step"]) for s in state["optimizers"][0]["state"].values()}
    assert max(optimizer_steps) == 11  # the shared weights: 12 steps, one of them skipped
    assert state["global_step"] == 12


def test_non_finite_parameters_are_never_saved(nan_setup, monkeypatch, capsys):
    """A finite loss can still leave NaN weights (e.g. an inf gradient). Such a model
    predicts class 0 everywhere and could 'win' an evaluation: it is never saved."""
    folder, args = nan_setup
    original = training.Trainer.train_step

    def poison_after_step_4(self, task_id):
        loss = original(self, task_id)
        if self.global_step + 1 == 4:
            with torch.no_grad():
                self.model.classifier[2].weight.fill_(float("nan"))  # mnli's head, not drawn again in epoch 0
        return loss

    monkeypatch.setattr(training.Trainer, "train_step", poison_after_step_4)
    out = folder / "poisoned"
    code = run_multi_task.main(args(out))
    assert_clean_error(code, capsys, ["parameter 'classifier.2.weight' became non-finite by step 4",
                                      "not saving the best model"])
    assert not (out / "best_model.pth").exists() and not (out / "checkpoints" / "last.pt").exists()


# ---------------------------------------------------------------------------------------
# Long runs: resident memory stays flat
# ---------------------------------------------------------------------------------------

SOAK_DRIVER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import run_multi_task, training

    def resident_kib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    samples = []
    train_step = training.Trainer.train_step

    def sampled(self, task_id):
        loss = train_step(self, task_id)
        if (self.global_step + 1) % 100 == 0:
            samples.append([self.global_step + 1, resident_kib()])
        return loss

    training.Trainer.train_step = sampled
    code = run_multi_task.main(sys.argv[2:])
    print(json.dumps({"code": code, "samples": samples}))
""")


@pytest.mark.slow  # 1,000 steps (about 30 s)
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (Linux)")
def test_soak_resident_memory_stays_flat(tmp_path, glue_dir, small_vocab):
    """1,000 steps over 4 epochs (evaluation, metrics, best model and checkpoints every
    125 steps included): resident memory late in the run stays within 2 MiB of where it
    settled after the first epoch. (Over 2,000 steps it moved 0.3 MiB after settling.)"""
    config = write_json(tmp_path / "config.json", tiny_config_dict(small_vocab))
    args = [str(a) for a in [
        "--data_dir", glue_dir, "--bert_config_file", config, "--vocab_file", small_vocab,
        "--output_dir", tmp_path / "soak", "--tasks", "cola,sts,mnli", "--do_lower_case", "--max_seq_length", "32",
        "--train_batch_size", "8", "--eval_batch_size", "32", "--seed", "3", "--no_plot", "--do_train", "--do_eval",
        "--sample", "sqrt", "--num_train_epochs", "4", "--steps_per_epoch", "250", "--learning_rate", "1e-3",
        "--save_checkpoints_steps", "125"]]
    result = subprocess.run([sys.executable, "-c", SOAK_DRIVER, str(REPO_ROOT), *args], capture_output=True,
                            text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    rss = dict(report["samples"])
    assert sorted(rss) == list(range(100, 1001, 100))
    settled = max(rss[step] for step in (300, 400, 500))  # after the first evaluation and saves
    late = max(rss[step] for step in (800, 900, 1000))
    growth_mib = (late - settled) / 1024
    print(f"soak: RSS settled {settled / 1024:.1f} MiB, late {late / 1024:.1f} MiB, growth {growth_mib:+.1f} MiB; "
          f"samples (step, MiB): {[(s, round(k / 1024, 1)) for s, k in sorted(rss.items())]}")
    # Keeping one collated batch per step (a few KiB) adds 4.1 MiB between the windows.
    assert growth_mib < 2, rss
