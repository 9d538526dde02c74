"""An adapter from the user's own file: ``--adapter_module my_adapter.py``.

The file (written here to tmp_path, outside the project) registers an adapter; a
config selects it by name; run_multi_task.py trains it on the real MiniLM weights, the
adapter files export it, --resume finds the file again through args.json, and
predict.py / extract_features.py rebuild the model with it. A missing file, a file
that registers nothing and a name taken by a built-in adapter each end in one line.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import checkpointing
import extract_features
import modeling
import predict
import run_multi_task
from demo_data import write_demo_glue

NAME = "scale_shift"
TASKS = ["cola", "sts"]

ADAPTER_SOURCE = f'''
import torch
from torch import nn

import modeling


class ScaleShift(nn.Module):
    """Beside each layer: h * s + b, per task and layer; s and b start at 0."""

    def __init__(self, config):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(config.hidden_size))
        self.shift = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, hidden_states, attention_mask=None):
        return hidden_states * self.scale + self.shift


modeling.register_adapter("{NAME}", ScaleShift)
'''


def adapter_keys(state, task=None):
    """The adapter's tensors (all of its own parameters are 'scale' and 'shift')."""
    return sorted(k for k in state if k.endswith((".scale", ".shift"))
                  and (task is None or modeling.task_of_key(k) == task))


def unregister():
    """As in a fresh process: the adapter is known only once its file is loaded again."""
    modeling.ADAPTERS.pop(NAME, None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minilm_dir):
    """Two epochs of two steps, --freeze, on small demo data; every epoch checkpoint kept."""
    folder = tmp_path_factory.mktemp("adapter_module")
    adapter_file = folder / "my_adapter.py"
    adapter_file.write_text(ADAPTER_SOURCE)
    data_dir = folder / "glue"
    write_demo_glue(data_dir, seed=3, scale=0.2)
    config_file = folder / "scale_shift_config.json"
    config_file.write_text(json.dumps({**json.loads((minilm_dir / "config.json").read_text()),
                                       "mult": True, "adapter": NAME}))
    out = folder / "out"
    args = ["--data_dir", data_dir, "--tasks", ",".join(TASKS), "--do_train", "--steps_per_epoch", "2",
            "--num_train_epochs", "2", "--train_batch_size", "8", "--max_seq_length", "32",
            "--eval_batch_size", "32", "--learning_rate", "1e-3", "--do_lower_case",
            # no warm-up: a parameter's first update (its own step 0) would have learning rate 0
            "--warmup_proportion", "0",
            "--vocab_file", minilm_dir / "vocab.txt", "--init_checkpoint", minilm_dir,
            "--bert_config_file", config_file, "--output_dir", out, "--seed", "3", "--no_plot", "--freeze",
            "--keep_epoch_checkpoints", "--keep_last_checkpoint", "--adapter_module", adapter_file]
    unregister()
    assert run_multi_task.main([str(a) for a in args]) == 0
    yield {"out": out, "adapter_file": adapter_file, "data_dir": data_dir, "folder": folder}
    unregister()


@pytest.mark.slow
def test_the_users_adapter_trains_is_frozen_apart_from_bert_and_is_exported(trained, minilm_dir):
    out = trained["out"]
    best = torch.load(out / checkpointing.BEST_MODEL_FILE, weights_only=True)
    layers = json.loads((minilm_dir / "config.json").read_text())["num_hidden_layers"]
    assert adapter_keys(best) == sorted(f"bert.encoder.layer.{n}.multi_layers.{t}.{p}"
                                        for n in range(layers) for t in range(len(TASKS)) for p in ("scale", "shift"))
    # It started at 0 (ScaleShift's init) and trained away from it, for every task.
    for task in range(len(TASKS)):
        assert all(best[key].abs().max() > 0 for key in adapter_keys(best, task)), task
    # --freeze kept BERT's own weights at the checkpoint's (LayerNorms train, as in the original).
    pretrained = load_file(str(minilm_dir / "model.safetensors"))
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
                 f"encoder.layer.{layers - 1}.output.dense.weight", "pooler.dense.weight"):
        assert torch.equal(best["bert." + name], pretrained[name]), name

    # Each task's adapter file holds its adapter (under task index 0) and its head, nothing shared.
    for task_id, task in enumerate(TASKS):
        tensors = load_file(str(out / checkpointing.ADAPTER_DIR / f"{task}.safetensors"))
        assert adapter_keys(tensors) == sorted(key.replace(f"multi_layers.{task_id}.", "multi_layers.0.")
                                               for key in adapter_keys(best, task_id))
        for key in adapter_keys(best, task_id):
            assert torch.equal(tensors[key.replace(f"multi_layers.{task_id}.", "multi_layers.0.")], best[key])
        assert set(tensors) - set(adapter_keys(tensors)) == {"classifier.0.weight", "classifier.0.bias"}


@pytest.mark.slow
def test_resume_loads_the_adapter_module_again_from_args_json(trained, tmp_path):
    """Resumed from the first epoch's checkpoint with no flag but --resume (args.json has
    the file), the run ends exactly where the uninterrupted one did."""
    out = trained["out"]
    assert json.loads((out / checkpointing.ARGS_FILE).read_text())["adapter_module"] == str(trained["adapter_file"])
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "checkpoints" / "epoch_1.pt", resumed / "checkpoints" / "last.pt")
    shutil.copy(out / checkpointing.ARGS_FILE, resumed / checkpointing.ARGS_FILE)
    unregister()
    assert run_multi_task.main(["--output_dir", str(resumed), "--do_train", "--resume"]) == 0
    assert NAME in modeling.ADAPTERS
    full = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]
    again = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert adapter_keys(full) and all(torch.equal(full[key], again[key]) for key in adapter_keys(full))


@pytest.mark.slow
def test_predict_and_extract_features_build_the_model_with_the_adapter_module(trained, tmp_path, capsys):
    out, adapter_file = trained["out"], str(trained["adapter_file"])
    lines = tmp_path / "in.txt"
    lines.write_text("the cat sat on the mat .\nhe did not come .\n")
    predictions = tmp_path / "out.jsonl"
    arguments = ["--model_dir", str(out), "--task", "sts", "--input_file", str(lines),
                 "--output_file", str(predictions)]
    unregister()
    assert predict.main(arguments) == 2  # without the file, one line says what is missing
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and f"'{NAME}' is not a registered adapter" in error
    assert "--adapter_module" in error and str(out / "config.json") in error
    assert predict.main([*arguments, "--adapter_module", adapter_file]) == 0
    assert len(predictions.read_text().splitlines()) == 2

    unregister()
    features = tmp_path / "features.jsonl"
    assert extract_features.main(["--input_file", str(lines), "--output_file", str(features),
                                  "--vocab_file", str(out / "vocab.txt"), "--bert_config_file",
                                  str(out / "config.json"), "--init_checkpoint", str(out / "best_model.pth"),
                                  "--task_id", "sts", "--layers=-1", "--adapter_module", adapter_file]) == 0
    assert len(features.read_text().splitlines()) == 2


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "adapter module not found"),
    ("registers_nothing", "registers no adapter (call modeling.register_adapter(name, cls) in it)"),
    ("built_in_name", "adapter name 'pals' is already registered (a built-in adapter): choose another name"),
    ("broken", "cannot import it (line 2): SyntaxError"),
])
def test_a_bad_adapter_module_is_one_line(case, message, tmp_path, capsys, minilm_dir):
    files = {
        "missing": tmp_path / "nowhere.py",
        "registers_nothing": _write(tmp_path / "empty.py", "from torch import nn\n"),
        "built_in_name": _write(tmp_path / "clash.py", ADAPTER_SOURCE.replace(f'"{NAME}"', '"pals"')),
        "broken": _write(tmp_path / "broken.py", "import torch\ndef (\n"),
    }
    before = dict(modeling.ADAPTERS)
    args = ["--data_dir", str(tmp_path), "--bert_config_file", str(minilm_dir / "config.json"),
            "--vocab_file", str(minilm_dir / "vocab.txt"), "--output_dir", str(tmp_path / "out"), "--do_train",
            "--adapter_module", str(files[case])]
    assert run_multi_task.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {files[case]}: ") and message in err, err
    assert modeling.ADAPTERS == before  # nothing half-registered
    assert not (tmp_path / "out").exists()  # refused before any work
