"""The adapter registry: a new adapter type is added in one place (here, this file),
and trains, saves and rebuilds through the unchanged scripts.

``modeling.register_adapter(name, cls)`` and a config with ``"adapter": name`` put
``cls(config)`` beside every layer (mult) or in the Houlsby FFN position; the original
configs keep exactly their modules and keys.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file
from torch import nn

import checkpointing
import modeling
import run_multi_task
from configuration import ARCHITECTURE_FLAGS
from errors import ConfigError
from modeling import ADAPTERS, BertConfig, BertForMultiTask, BertModel, register_adapter

NAME = "task_bias"
TASKS = ["cola", "sts"]


class TaskBias(nn.Module):
    """The smallest adapter: a per-task bias beside each layer, out = b_task broadcast
    to [B, T, H]; b starts at 0, so the model starts as plain BERT."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.task_bias = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, hidden_states: torch.Tensor, attention_mask=None) -> torch.Tensor:
        return self.task_bias.expand_as(hidden_states)  # [B, T, H]


@pytest.fixture
def registered():
    register_adapter(NAME, TaskBias)
    yield NAME
    ADAPTERS.pop(NAME, None)


def adapter_keys(state, name="task_bias"):
    return sorted(key for key in state if key.endswith(name))


# ---------------------------------------------------------------------------------------
# Registry and config
# ---------------------------------------------------------------------------------------

def test_registered_adapter_sits_beside_every_layer_under_multi_layers(registered):
    model = BertForMultiTask(tiny_config(mult=True, adapter=registered), [2, 1])
    for layer in model.bert.encoder.layer:
        assert [type(m) for m in layer.multi_layers] == [TaskBias, TaskBias]
    keys = adapter_keys(model.state_dict())
    assert keys == [f"bert.encoder.layer.{n}.multi_layers.{t}.task_bias" for n in range(2) for t in range(2)]
    for key in keys:  # checkpointing's task detection needs no change
        assert modeling.is_task_specific(key)
        assert modeling.task_of_key(key) == int(key.split("multi_layers.")[1][0])
    houlsby = BertForMultiTask(tiny_config(houlsby=True, adapter=registered), [2, 1])
    layer = houlsby.bert.encoder.layer[0]
    assert isinstance(layer.output.multi_layers[0], TaskBias)  # FFN position
    assert isinstance(layer.attention.output.multi_layers[0], modeling.BERTLowRank)  # as the original


def test_unknown_adapter_is_a_config_error_naming_the_key_and_the_registered_names(registered):
    # A config may name an adapter a user's file registers later: the model checks the name.
    config = BertConfig.from_dict({"vocab_size": 10, "hidden_size": 12, "num_attention_heads": 2,
                                   "mult": True, "adapter": "lora"})
    with pytest.raises(ConfigError, match=r"'adapter' 'lora'.*low_rank, pals, task_bias.*--adapter_module"):
        BertForMultiTask(config, [2])
    with pytest.raises(ConfigError, match="'adapter'"):
        tiny_config(mult=True, adapter=3)
    with pytest.raises(ConfigError, match="needs 'mult' or 'houlsby'"):
        tiny_config(adapter=registered)
    with pytest.raises(ConfigError, match="'pals' is true but 'adapter'"):
        tiny_config(mult=True, pals=True, adapter=registered)


def test_register_adapter_refuses_to_replace_a_name():
    register_adapter("pals", modeling.BERTPals)  # the same class again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("pals", TaskBias)
    with pytest.raises(ValueError):
        register_adapter("", TaskBias)
    assert ADAPTERS["pals"] is modeling.BERTPals


CONFIG_FILES = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.json"))


@pytest.mark.parametrize("path", [*CONFIG_FILES, None], ids=lambda p: p.name if p else "registered_adapter")
def test_task_keys_follow_the_structure_of_the_model(path, registered):
    """The task of every state-dict key, found without reading its name: a model of n+1
    tasks has task n's keys beyond those of a model of n tasks, and BERT without adapters
    has the keys of no task. task_of_key and is_task_specific agree with that for every
    shipped config and for a registered adapter whose parameter names say nothing."""
    if path is None:
        flags = {"mult": True, "adapter": registered}
    else:
        config = BertConfig.from_json_file(path)
        flags = {name: getattr(config, name) for name in (*ARCHITECTURE_FLAGS, "extra_dim", "adapter")}
    keys = [list(BertForMultiTask(tiny_config(**flags, num_tasks=n), [2] * n).state_dict()) for n in (1, 2, 3)]
    shared = {"bert." + key for key in BertModel(tiny_config(**flags).without_adapters()).state_dict()}
    for key in keys[2]:
        task = None if key in shared else next(n for n in range(3) if key in keys[n])
        assert modeling.task_of_key(key) == task, key
        assert modeling.is_task_specific(key) == (task is not None), key
        if task is not None:
            assert modeling.task_of_key(modeling.key_for_task(key, 0)) == 0


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_original_configs_round_trip_and_build_the_same_modules(path):
    """Every shipped config: no 'adapter' key written, the round trip is exact, and
    naming the adapter that the flags choose builds the same keys, tying and weights."""
    config = BertConfig.from_json_file(path)
    assert config.adapter is None
    written = json.loads(config.to_json_string())
    assert "adapter" not in written
    assert BertConfig.from_dict(written) == config
    assert BertConfig.from_dict({**written, "adapter": None}) == config
    assert set(json.loads(path.read_text())) <= set(written)
    if not (config.mult or config.houlsby):
        return
    flags = {name: getattr(config, name) for name in ("pals", "mult", "top", "lhuc", "houlsby", "bert_lay_top",
                                                       "extra_dim")}
    tiny = tiny_config(**flags)
    torch.manual_seed(0)
    default = BertForMultiTask(tiny, [2, 3])
    torch.manual_seed(0)
    named = BertForMultiTask(tiny.replace(adapter=tiny.adapter_name), [2, 3])
    default_state, named_state = default.state_dict(), named.state_dict()
    assert list(default_state) == list(named_state)
    assert all(torch.equal(default_state[k], named_state[k]) for k in default_state)
    assert repr(default) == repr(named)
    assert modeling.count_parameters(default) == modeling.count_parameters(named)  # tied PALs stay tied


# ---------------------------------------------------------------------------------------
# End to end: train, save, rebuild through run_multi_task.py
# ---------------------------------------------------------------------------------------

def test_new_adapter_trains_end_to_end_and_rebuilds_from_adapter_files(registered, tmp_path, minilm_dir, glue_dir):
    data_dir = glue_dir
    config_file = tmp_path / "task_bias_config.json"
    config_values = json.loads((minilm_dir / "config.json").read_text())
    config_values.update({"mult": True, "adapter": registered})
    config_file.write_text(json.dumps(config_values))
    out = tmp_path / "out"
    args = ["--data_dir", data_dir, "--tasks", ",".join(TASKS), "--do_train", "--steps_per_epoch", "6",
            "--num_train_epochs", "1", "--train_batch_size", "8", "--max_seq_length", "32",
            "--learning_rate", "5e-5", "--do_lower_case", "--vocab_file", minilm_dir / "vocab.txt",
            "--init_checkpoint", minilm_dir, "--bert_config_file", config_file, "--output_dir", out,
            "--seed", "3", "--no_plot"]
    assert run_multi_task.main([str(a) for a in args]) == 0

    config = BertConfig.from_json_file(out / "config.json")
    assert config.adapter == registered and config.num_tasks == len(TASKS)
    best = torch.load(out / "best_model.pth", weights_only=True)
    layers = config.num_hidden_layers
    assert adapter_keys(best) == sorted(f"bert.encoder.layer.{n}.multi_layers.{t}.task_bias"
                                        for n in range(layers) for t in range(len(TASKS)))
    # Initialised to zero (a fresh model), trained away from it.
    fresh = BertForMultiTask(config, [2, 1]).state_dict()
    assert all(not fresh[key].any() for key in adapter_keys(fresh))
    assert all(best[key].abs().max() > 0 for key in adapter_keys(best))

    # The adapter files hold each task's biases under task index 0.
    adapters = out / checkpointing.ADAPTER_DIR
    for task_id, task in enumerate(TASKS):
        tensors = load_file(str(adapters / f"{task}.safetensors"))
        assert adapter_keys(tensors) == sorted(f"bert.encoder.layer.{n}.multi_layers.0.task_bias"
                                               for n in range(layers))
        for n in range(layers):
            assert torch.equal(tensors[f"bert.encoder.layer.{n}.multi_layers.0.task_bias"],
                               best[f"bert.encoder.layer.{n}.multi_layers.{task_id}.task_bias"])

    # Rebuilt from the shared BERT (best_model.pth, whose own heads and adapters are
    # ignored) and the adapter files in another order: the saved best model's outputs.
    tasks = checkpointing.read_tasks_file(out / "tasks.json")
    model = BertForMultiTask(config, [t["num_labels"] for t in tasks])
    model.load_state_dict(best, strict=True)
    model.eval()
    rebuilt, names = checkpointing.build_model_from_adapters(
        out / checkpointing.BEST_MODEL_FILE, [adapters / f"{task}.safetensors" for task in reversed(TASKS)])
    assert names == list(reversed(TASKS))
    rebuilt.eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, config.vocab_size, (4, 20), generator=generator)
    types = torch.zeros_like(ids)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        for task_id, task in enumerate(TASKS):
            rebuilt_id = names.index(task)
            assert torch.equal(model(ids, types, mask, task_id), rebuilt(ids, types, mask, rebuilt_id))
        # The biases matter: without them the outputs differ.
        for layer in model.bert.encoder.layer:
            layer.multi_layers[0].task_bias.zero_()
        assert not torch.equal(model(ids, types, mask, 0), rebuilt(ids, types, mask, names.index(TASKS[0])))
