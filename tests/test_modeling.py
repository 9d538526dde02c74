"""modeling.py: parity with transformers on real weights, every architecture, keys,
parameter counts, configs and checkpoint loading."""
import copy
import dataclasses
import itertools
import json
import logging
import math
import pickle
import re
from pathlib import Path

import conftest
import pytest
import torch
import torch.nn.functional as F

import modeling
from checkpointing import load_pretrained_weights
from configuration import ARCHITECTURE_FLAGS
from errors import CheckpointError
from modeling import (
    BertConfig,
    BertForMultipleChoice,
    BertForMultiTask,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertModel,
    ConfigError,
    count_parameters,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

SENTENCE_PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on a rug."),
    ("Stocks fell sharply on Monday after the announcement.", "Markets dropped."),
    ("He said he would come.", "He didn't come, although he had promised to be there early in the morning."),
    ("Paris is the capital of France.", "Berlin is in Germany."),
]


# ---------------------------------------------------------------------------------------
# Parity with Hugging Face transformers on the real MiniLM weights
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_pair(minilm_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertModel.from_pretrained(str(minilm_dir), attn_implementation="eager").eval()
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    ours = BertModel(config)
    report = load_pretrained_weights(ours, minilm_dir)
    assert not report.kept_init
    return ours.eval(), reference


@pytest.fixture(scope="module")
def padded_pairs(minilm_dir):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.BertTokenizerFast(str(minilm_dir / "vocab.txt"), do_lower_case=True)
    batch = tokenizer([a for a, _ in SENTENCE_PAIRS], [b for _, b in SENTENCE_PAIRS],
                      padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    assert (batch["token_type_ids"] == 1).any(), "the batch must contain segment B tokens"
    return batch


def _compare_with_transformers(ours, reference, batch, positions):
    with torch.no_grad():
        layers, pooled = ours(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        expected = reference(**batch, output_hidden_states=True)
    assert len(layers) == ours.config.num_hidden_layers == len(expected.hidden_states) - 1
    differences = [(mine - theirs)[positions].abs().max().item()
                   for mine, theirs in zip(layers, expected.hidden_states[1:])]
    return differences, (pooled - expected.pooler_output).abs().max().item()


def test_every_layer_and_pooled_output_match_transformers(minilm_pair, padded_pairs):
    """fp32, every real token of every layer, and the pooled output: within 1e-5.

    Rows at padding positions are left to the float64 test below: there both fp32
    implementations sit about 3e-5 from the float64 result (the rows are ill-conditioned),
    so a 1e-5 bound between two fp32 runs would measure rounding luck, not correctness.
    """
    ours, reference = minilm_pair
    real_tokens = padded_pairs["attention_mask"].bool()
    layer_differences, pooled_difference = _compare_with_transformers(ours, reference, padded_pairs, real_tokens)
    for index, difference in enumerate(layer_differences):
        assert difference <= 1e-5, f"layer {index}: max abs difference {difference}"
    assert pooled_difference <= 1e-5


def test_float64_matches_transformers_everywhere_including_padding(minilm_pair, padded_pairs):
    """In float64 rounding vanishes: the formulas agree at every position, padding included."""
    ours, reference = minilm_pair
    ours64, reference64 = copy.deepcopy(ours).double(), copy.deepcopy(reference).double()
    every_position = torch.ones_like(padded_pairs["attention_mask"], dtype=torch.bool)
    layer_differences, pooled_difference = _compare_with_transformers(ours64, reference64, padded_pairs, every_position)
    assert max(layer_differences) <= 1e-9 and pooled_difference <= 1e-9, layer_differences


def test_token_types_and_mask_matter(minilm_pair, padded_pairs):
    """Guards the parity test against inputs being silently ignored."""
    ours, _ = minilm_pair
    with torch.no_grad():
        _, with_types = ours(padded_pairs["input_ids"], padded_pairs["token_type_ids"], padded_pairs["attention_mask"])
        _, without_types = ours(padded_pairs["input_ids"], None, padded_pairs["attention_mask"])
        _, without_mask = ours(padded_pairs["input_ids"], padded_pairs["token_type_ids"], None)
    assert (with_types - without_types).abs().max() > 1e-3
    assert (with_types - without_mask).abs().max() > 1e-3


def test_padding_does_not_change_real_tokens(minilm_pair, padded_pairs):
    ours, _ = minilm_pair
    ids, types, mask = padded_pairs["input_ids"], padded_pairs["token_type_ids"], padded_pairs["attention_mask"]
    shortest = int(mask.sum(1).argmin())
    length = int(mask[shortest].sum())
    with torch.no_grad():
        padded_layers, _ = ours(ids[shortest:shortest + 1], types[shortest:shortest + 1], mask[shortest:shortest + 1])
        alone_layers, _ = ours(ids[shortest:shortest + 1, :length], types[shortest:shortest + 1, :length])
    assert (padded_layers[-1][:, :length] - alone_layers[-1]).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------
# Numerics against the original's formulas
# ---------------------------------------------------------------------------------------

def original_layer_norm(x, gamma, beta, eps=1e-12):
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    return gamma * (x - u) / torch.sqrt(s + eps) + beta


def original_self_attention(module, hidden, mask):
    """The original: explicit scores, softmax, probs · V (no dropout in eval)."""
    def split(x):
        b, t, _ = x.shape
        return x.view(b, t, module.num_attention_heads, module.attention_head_size).permute(0, 2, 1, 3)
    q, k, v = split(module.query(hidden)), split(module.key(hidden)), split(module.value(hidden))
    scores = q @ k.transpose(-1, -2) / math.sqrt(module.attention_head_size) + mask
    context = torch.softmax(scores, dim=-1) @ v
    return context.permute(0, 2, 1, 3).reshape(hidden.shape[0], hidden.shape[1], -1)


def tiny_config(**flags):
    return conftest.tiny_config(**{"num_tasks": 3, **flags})


def test_layer_norm_equals_the_original_formula():
    torch.manual_seed(0)
    layer_norm = modeling.BERTLayerNorm(tiny_config())
    layer_norm.gamma.data.normal_()
    layer_norm.beta.data.normal_()
    x = torch.randn(3, 7, 48) * 5 + 2
    expected = original_layer_norm(x, layer_norm.gamma, layer_norm.beta)
    assert (layer_norm(x) - expected).abs().max().item() <= 1e-5
    assert layer_norm.variance_epsilon == 1e-12


@pytest.mark.parametrize("heads", [None, 6])
def test_attention_equals_the_original_formula(heads):
    torch.manual_seed(0)
    config = tiny_config()
    attention = modeling.BERTSelfAttention(config, heads).eval()
    width = config.hidden_size_aug if heads else config.hidden_size
    hidden = torch.randn(2, 9, width)
    mask = modeling.extended_attention_mask(torch.tensor([[1] * 9, [1] * 5 + [0] * 4]), torch.float32)
    assert mask.shape == (2, 1, 1, 9) and mask[1, 0, 0, -1].item() == -10000.0
    expected = original_self_attention(attention, hidden, mask)
    assert (attention(hidden, mask) - expected).abs().max().item() <= 1e-5


def test_gelu_is_the_erf_form():
    x = torch.linspace(-6, 6, 101)
    assert torch.allclose(modeling.gelu(x), x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))), atol=1e-6)


# ---------------------------------------------------------------------------------------
# Every architecture: builds, forward and backward per task, exact state-dict keys
# ---------------------------------------------------------------------------------------

BERT_KEYS = [
    "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.{gb}",
    "encoder.layer.{l}.attention.self.{qkv}.{wb}", "encoder.layer.{l}.attention.output.dense.{wb}",
    "encoder.layer.{l}.attention.output.LayerNorm.{gb}", "encoder.layer.{l}.intermediate.dense.{wb}",
    "encoder.layer.{l}.output.dense.{wb}", "encoder.layer.{l}.output.LayerNorm.{gb}", "pooler.dense.{wb}",
]
PAL_KEYS = ["encoder.layer.{l}.multi_layers.{t}.attn.{qkv}.{wb}",
            "encoder.layer.{l}.multi_layers.{t}.aug_dense.{wb}", "encoder.layer.{l}.multi_layers.{t}.aug_dense2.{wb}",
            "encoder.mult_aug_dense.{t}.{wb}", "encoder.mult_aug_dense2.{t}.{wb}"]
LOW_RANK_KEYS = ["encoder.layer.{l}.multi_layers.{t}.aug_dense.{wb}",
                 "encoder.layer.{l}.multi_layers.{t}.aug_dense2.{wb}"]
HOULSBY_KEYS = ["encoder.layer.{l}.attention.output.multi_layers.{t}.aug_dense.{wb}",
                "encoder.layer.{l}.attention.output.multi_layers.{t}.aug_dense2.{wb}",
                "encoder.layer.{l}.output.multi_layers.{t}.aug_dense.{wb}",
                "encoder.layer.{l}.output.multi_layers.{t}.aug_dense2.{wb}"]
HOULSBY_PALS_KEYS = ["encoder.layer.{l}.attention.output.multi_layers.{t}.aug_dense.{wb}",
                     "encoder.layer.{l}.attention.output.multi_layers.{t}.aug_dense2.{wb}",
                     "encoder.layer.{l}.output.multi_layers.{t}.aug_dense.{wb}",
                     "encoder.layer.{l}.output.multi_layers.{t}.aug_dense2.{wb}",
                     "encoder.layer.{l}.output.multi_layers.{t}.attn.{qkv}.{wb}",
                     "encoder.mult_aug_dense.{t}.{wb}", "encoder.mult_aug_dense2.{t}.{wb}"]
TOP_ATTENTION_KEYS = ["encoder.mult_dense.{t}.{wb}", "encoder.mult_dense2.{t}.{wb}",
                      "encoder.multi_layers.{t}.{k}.self.{qkv}.{wb}",
                      "encoder.multi_layers.{t}.{k}.output.dense.{wb}",
                      "encoder.multi_layers.{t}.{k}.output.LayerNorm.{gb}"]
TOP_BERT_LAYER_KEYS = [key.replace("encoder.layer.{l}.", "encoder.multi_layers.{t}.")
                       for key in BERT_KEYS if key.startswith("encoder.layer.")]
LHUC_KEYS = ["encoder.layer.{l}.multi_lhuc.{t}.lhuc"]

ARCHITECTURES = {
    "shared": ({}, []),
    "pals": ({"mult": True, "pals": True}, PAL_KEYS),
    "low_rank": ({"mult": True}, LOW_RANK_KEYS),
    "low_rank_extra_dim": ({"mult": True, "extra_dim": 10}, LOW_RANK_KEYS),
    "houlsby": ({"houlsby": True}, HOULSBY_KEYS),
    "houlsby_pals": ({"houlsby": True, "pals": True, "extra_dim": 10}, HOULSBY_PALS_KEYS),
    "top_attention": ({"top": True}, TOP_ATTENTION_KEYS),
    "top_bert_layer": ({"top": True, "bert_lay_top": True}, TOP_BERT_LAYER_KEYS),
    "lhuc": ({"lhuc": True}, LHUC_KEYS),
    "lhuc_pals": ({"lhuc": True, "mult": True, "pals": True}, LHUC_KEYS + PAL_KEYS),
    "lhuc_low_rank": ({"lhuc": True, "mult": True}, LHUC_KEYS + LOW_RANK_KEYS),
    "lhuc_houlsby": ({"lhuc": True, "houlsby": True}, LHUC_KEYS + HOULSBY_KEYS),
}
TASK_LABELS = [2, 3, 1]


def expand(templates, config):
    fill = {"l": range(config.num_hidden_layers), "t": range(config.num_tasks), "k": range(6),
            "qkv": ("query", "key", "value"), "wb": ("weight", "bias"), "gb": ("gamma", "beta")}
    keys = set()
    for template in templates:
        names = re.findall(r"{(\w+)}", template)
        for values in itertools.product(*(fill[name] for name in names)):
            keys.add(template.format(**dict(zip(names, values))))
    return keys


def expected_keys(flags):
    config = tiny_config(**flags)
    bert_keys = expand(BERT_KEYS + ARCHITECTURES_BY_FLAGS[tuple(sorted(flags.items()))], config)
    head_keys = {f"classifier.{t}.{wb}" for t in range(config.num_tasks) for wb in ("weight", "bias")}
    return {"bert." + key for key in bert_keys} | head_keys


ARCHITECTURES_BY_FLAGS = {tuple(sorted(flags.items())): keys for flags, keys in ARCHITECTURES.values()}


def make_batch(config, batch=3, length=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return ids, types, mask


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_state_dict_keys_are_exactly_the_originals(name):
    flags, _ = ARCHITECTURES[name]
    model = BertForMultiTask(tiny_config(**flags), TASK_LABELS)
    assert set(model.state_dict()) == expected_keys(flags)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architecture_forward_backward_reaches_only_the_drawn_task(name):
    flags, _ = ARCHITECTURES[name]
    torch.manual_seed(0)
    config = tiny_config(**flags)
    model = BertForMultiTask(config, TASK_LABELS)
    _randomise_lhuc(model)
    ids, types, mask = make_batch(config)
    for task, num_labels in enumerate(TASK_LABELS):
        model.zero_grad(set_to_none=True)
        labels = torch.rand(3) if num_labels == 1 else torch.randint(0, num_labels, (3,))
        loss, logits = model(ids, types, mask, task, labels=labels)
        assert logits.shape == (3, num_labels)
        assert torch.isfinite(loss)
        loss.backward()
        for key, param in model.named_parameters():
            task_index = _task_index_of(key)
            if task_index is None:
                assert param.grad is not None, f"{name}: shared {key} got no gradient"
            elif task_index == task:
                assert param.grad is not None and param.grad.abs().sum() > 0, f"{name}: {key} got no gradient"
            else:
                assert param.grad is None, f"{name}: task {task} reached {key}"


def _randomise_lhuc(model):
    """LHUC starts at zero (identity); a non-zero value makes its gradient path visible."""
    for key, param in model.named_parameters():
        if key.endswith("lhuc"):
            param.data.normal_()


def _task_index_of(key):
    """The task a parameter belongs to, from its name; None for shared parameters."""
    task = modeling.task_of_key(key)
    if task is None:
        assert not modeling.is_task_specific(key), key
    return task


def test_pal_projections_are_tied_across_layers_per_task():
    config = tiny_config(mult=True, pals=True, num_hidden_layers=3)
    model = BertModel(config)
    state = model.state_dict()
    for task in range(config.num_tasks):
        aliases = [f"encoder.layer.{n}.multi_layers.{task}.aug_dense.weight" for n in range(3)]
        aliases.append(f"encoder.mult_aug_dense.{task}.weight")
        assert len({state[key].data_ptr() for key in aliases}) == 1
    other = {state[f"encoder.mult_aug_dense.{t}.weight"].data_ptr() for t in range(config.num_tasks)}
    assert len(other) == config.num_tasks
    # the PAL attention is per layer and per task
    queries = {state[f"encoder.layer.{n}.multi_layers.{t}.attn.query.weight"].data_ptr()
               for n in range(3) for t in range(config.num_tasks)}
    assert len(queries) == 3 * config.num_tasks


def test_pal_output_is_the_documented_formula():
    """h_out = LN2(FFN(a) + a + gelu(V_D · MHA6(V_E · h)))."""
    torch.manual_seed(0)
    config = tiny_config(mult=True, pals=True)
    model = BertForMultiTask(config, TASK_LABELS).eval()
    layer = model.bert.encoder.layer[0]
    hidden = torch.randn(2, 5, config.hidden_size)
    mask = modeling.extended_attention_mask(torch.ones(2, 5), torch.float32)
    pal = layer.multi_layers[1]
    attention_output = layer.attention(hidden, mask)
    pal_output = F.gelu(pal.aug_dense2(original_self_attention(pal.attn, pal.aug_dense(hidden), mask)))
    ffn = layer.output.dense(layer.intermediate(attention_output))
    expected = original_layer_norm(ffn + attention_output + pal_output, layer.output.LayerNorm.gamma,
                                   layer.output.LayerNorm.beta)
    assert (layer(hidden, mask, 1) - expected).abs().max().item() <= 1e-5


def test_houlsby_ffn_adapter_reads_the_ffn_input():
    torch.manual_seed(0)
    config = tiny_config(houlsby=True)
    model = BertModel(config).eval()
    output = model.encoder.layer[0].output
    intermediate = torch.randn(2, 5, config.intermediate_size)
    ffn_input = torch.randn(2, 5, config.hidden_size)
    adapter = output.multi_layers[2]
    dense = output.dense(intermediate)
    expected = original_layer_norm(dense + adapter(ffn_input) + ffn_input, output.LayerNorm.gamma, output.LayerNorm.beta)
    assert (output(intermediate, ffn_input, None, 2) - expected).abs().max().item() <= 1e-5


def test_lhuc_with_houlsby_uses_the_drawn_tasks_adapter():
    """The original's defect: with lhuc and houlsby, task 0's FFN adapter served every task."""
    torch.manual_seed(0)
    config = tiny_config(houlsby=True, lhuc=True)
    model = BertModel(config).eval()
    ids, types, mask = make_batch(config)
    with torch.no_grad():
        before = [model(ids, types, mask, task)[1] for task in range(3)]
        # a random (not constant) change: LayerNorm would remove a constant shift
        model.encoder.layer[0].output.multi_layers[1].aug_dense2.bias.add_(torch.randn(config.hidden_size))
        after = [model(ids, types, mask, task)[1] for task in range(3)]
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert (before[1] - after[1]).abs().max() > 1e-4


def test_top_attention_replaces_the_last_layer_output():
    torch.manual_seed(0)
    config = tiny_config(top=True)
    model = BertModel(config).eval()
    ids, types, mask = make_batch(config)
    with torch.no_grad():
        layers, pooled = model(ids, types, mask, 1)
        hidden = model.embeddings(ids, types)
        ext = modeling.extended_attention_mask(mask, hidden.dtype)
        for layer in model.encoder.layer:
            hidden = layer(hidden, ext, 1)
        x = model.encoder.mult_dense[1](hidden)
        for block in model.encoder.multi_layers[1]:
            x = block(x, ext)
        top = model.encoder.mult_dense2[1](x)
    assert len(layers) == config.num_hidden_layers
    assert torch.allclose(layers[-1], top, atol=1e-6)
    assert torch.allclose(pooled, model.pooler(top), atol=1e-6)


def test_original_initialisation():
    torch.manual_seed(0)
    model = BertForMultiTask(tiny_config(top=True, lhuc=True), TASK_LABELS)
    block_norm = model.bert.encoder.multi_layers[0][0].output.LayerNorm
    assert block_norm.gamma.abs().max() < 0.2 and block_norm.gamma.std() > 0.005  # N(0, 0.02), not ones
    assert block_norm.beta.std() > 0.005
    assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if n.endswith("lhuc"))
    assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if n.endswith(".bias"))
    weights = model.bert.embeddings.word_embeddings.weight
    assert abs(weights.std().item() - 0.02) < 0.002


# ---------------------------------------------------------------------------------------
# Parameter counts for BERT-base with the eight GLUE tasks (spec 1.10)
# ---------------------------------------------------------------------------------------

GLUE_LABELS = [2, 2, 3, 2, 1, 2, 2, 2]


BERT_BASE_COUNTS = {
    "bert_base_config.json": 109_494_544,
    "pals_config.json": 124_053_232,
    "low_rank_config.json": 124_323_472,
    "top_attn_config.json": 120_058_096,
    "houlsby_config.json": 124_397_200,
    "houlsby_plus_pals_config.json": 125_923_888,
    "top_bert_layer_config.json": 166_197_520,
    "lhuc_config.json": 109_494_544 + 12 * 8 * 768,  # BERT-base + one H-vector per layer and task
}
BERT_BASE_CONFIGS = sorted(path.name for path in CONFIG_DIR.glob("*.json") if not path.name.startswith("minilm_"))


@pytest.mark.parametrize("config_file", BERT_BASE_CONFIGS)
def test_bert_base_parameter_counts(repo_root, config_file):
    """Every BERT-base config file: a new one fails here until its count is written above."""
    config = BertConfig.from_json_file(repo_root / "configs" / config_file).replace(num_tasks=8)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = BertForMultiTask(config, GLUE_LABELS)
    assert count_parameters(model) == BERT_BASE_COUNTS[config_file]


def test_bert_model_alone_has_the_original_count(repo_root):
    config = BertConfig.from_json_file(repo_root / "configs" / "bert_base_config.json")
    with torch.device("meta"):
        assert count_parameters(BertModel(config)) == 109_482_240


# ---------------------------------------------------------------------------------------
# Other heads
# ---------------------------------------------------------------------------------------

def test_sequence_classification_head():
    config = tiny_config(num_tasks=1)
    model = BertForSequenceClassification(config, 3)
    ids, types, mask = make_batch(config)
    loss, logits = model(ids, types, mask, labels=torch.tensor([0, 2, 1]))
    assert logits.shape == (3, 3)
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 2, 1])))
    assert model.eval()(ids, types, mask).shape == (3, 3)


def test_question_answering_head():
    config = tiny_config(num_tasks=1)
    model = BertForQuestionAnswering(config).eval()
    ids, types, mask = make_batch(config, length=7)
    start, end = model(ids, types, mask)
    assert start.shape == end.shape == (3, 7)
    starts, ends = torch.tensor([1, 2, 99]), torch.tensor([3, 4, 5])  # 99 is clamped to 7 and ignored
    loss = model(ids, types, mask, starts, ends)
    expected = (F.cross_entropy(start[:2], starts[:2]) + F.cross_entropy(end, ends)) / 2
    assert torch.allclose(loss, expected, atol=1e-6)


def test_multiple_choice_head():
    config = tiny_config(num_tasks=1)
    model = BertForMultipleChoice(config, num_choices=2).eval()
    ids = torch.randint(0, 99, (3, 2, 6))
    logits = model(ids, torch.zeros_like(ids), torch.ones_like(ids))
    assert logits.shape == (3, 2)
    loss = model(ids, torch.zeros_like(ids), torch.ones_like(ids), labels=torch.tensor([0, 1, 1]))
    assert torch.allclose(loss, F.cross_entropy(logits, torch.tensor([0, 1, 1])))


def test_regression_task_uses_mean_squared_error():
    config = tiny_config()
    model = BertForMultiTask(config, TASK_LABELS).eval()
    ids, types, mask = make_batch(config)
    labels = torch.tensor([0.1, 0.5, 0.9])
    loss, logits = model(ids, types, mask, 2, name="sts", labels=labels)
    assert torch.allclose(loss, ((logits.squeeze(1) - labels) ** 2).mean())


# ---------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------

def test_config_round_trip_keeps_every_key(repo_root):
    for path in sorted((repo_root / "configs").glob("*.json")):
        config = BertConfig.from_json_file(path)
        again = BertConfig.from_dict(json.loads(config.to_json_string()))
        assert again == config, path.name
        assert set(json.loads(path.read_text())) <= set(config.to_dict())


def test_config_is_checked_once_and_cannot_change_afterwards():
    config = tiny_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden_size = 50  # would pass by the check that 4 heads divide it
    with pytest.raises(ConfigError, match="'hidden_size' \\(50\\) is not divisible"):
        config.replace(hidden_size=50)


def test_the_original_extra_dim_key_sets_the_low_rank_width(repo_root):
    """houlsby_plus_pals_config.json (spec 1.5.4): low-rank 50 after attention, PAL 156 in FFN position."""
    config = BertConfig.from_json_file(repo_root / "configs" / "houlsby_plus_pals_config.json")
    assert (config.extra_dim, config.hidden_size_aug) == (50, 156)
    with torch.device("meta"):
        layer = BertModel(config).encoder.layer[0]
    assert layer.attention.output.multi_layers[0].aug_dense.out_features == 50
    assert layer.output.multi_layers[0].aug_dense.out_features == 156


def test_every_shipped_architecture_is_among_those_tested(repo_root):
    """The architectures above are built from flags; each config file's must be one of them."""
    def architecture(config):
        return tuple(getattr(config, flag) for flag in ARCHITECTURE_FLAGS), config.adapter_name, bool(config.extra_dim)

    tested = {architecture(tiny_config(**flags)) for flags, _ in ARCHITECTURES.values()}
    for path in sorted((repo_root / "configs").glob("*.json")):
        assert architecture(BertConfig.from_json_file(path)) in tested, path.name


def test_hugging_face_config_is_accepted(minilm_dir):
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (384, 6, 30522)
    assert config.to_dict()["architectures"] == ["BertModel"]


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 0}, "'hidden_size' must be a positive integer"),
    ({"num_hidden_layers": -1}, "'num_hidden_layers' must be a positive integer"),
    ({"vocab_size": None}, "missing key 'vocab_size'"),
    ({"hidden_size": 50}, "'hidden_size' (50) is not divisible by 'num_attention_heads' (4)"),
    ({"mult": True, "pals": True, "hidden_size_aug": 20}, "must be divisible by 6"),
    ({"top": True, "hidden_size_aug": 18}, "must be divisible by 12"),
    ({"houlsby": True, "pals": True, "hidden_size_aug": 32}, "must be divisible by 6"),
    ({"mult": True, "houlsby": True}, "'mult' and 'houlsby' cannot both be true"),
    ({"bert_lay_top": True}, "'bert_lay_top' needs 'top'"),
    ({"pals": True}, "'pals' needs 'mult' or 'houlsby'"),
    ({"hidden_dropout_prob": 1.5}, "'hidden_dropout_prob' must be a number in [0, 1)"),
    ({"hidden_act": "relu"}, "'hidden_act' must be \"gelu\""),
    ({"mult": "yes"}, "'mult' must be true or false"),
    ({"extra_dim": -5}, "'extra_dim' must be a positive integer"),
    ({"intermediate_size": 3.5}, "'intermediate_size' must be a positive integer"),
])
def test_bad_configs_are_refused(tmp_path, change, message):
    values = tiny_config().to_dict()
    values.update(change)
    if values["vocab_size"] is None:
        del values["vocab_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError) as error:
        BertConfig.from_json_file(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    ('{"vocab_size": 10,\n "hidden_size": }', ":2: invalid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"vocab_size": 99, "model_type": "roberta"}', "only BERT checkpoints"),
])
def test_unreadable_configs_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        BertConfig.from_json_file(path)


def test_missing_and_binary_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        BertConfig.from_json_file(tmp_path / "nope.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not UTF-8"):
        BertConfig.from_json_file(binary)


def test_multitask_head_count_must_match_num_tasks():
    with pytest.raises(ConfigError, match="2 task heads given but config.num_tasks is 3"):
        BertForMultiTask(tiny_config(), [2, 2])


# ---------------------------------------------------------------------------------------
# Loading pretrained weights in every supported format
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm_reference_output(minilm_pair, padded_pairs):
    ours, _ = minilm_pair
    with torch.no_grad():
        return ours(padded_pairs["input_ids"], padded_pairs["token_type_ids"], padded_pairs["attention_mask"])[1]


def _pooled_after_loading(minilm_dir, path, padded_pairs):
    model = BertModel(BertConfig.from_json_file(minilm_dir / "config.json"))
    load_pretrained_weights(model, path)
    with torch.no_grad():
        return model.eval()(padded_pairs["input_ids"], padded_pairs["token_type_ids"], padded_pairs["attention_mask"])[1]


def test_load_formats(tmp_path, minilm_dir, minilm_pair, padded_pairs, minilm_reference_output):
    from safetensors.torch import load_file, save_file
    hf_state = load_file(str(minilm_dir / "model.safetensors"))
    # 1. the safetensors file itself; 2. a torch .bin with the 'bert.' prefix and extra heads;
    # 3. the original converted format (gamma/beta, torch.save of our state dict);
    # 4. a DataParallel checkpoint ('module.' prefix); 5. a training checkpoint {"model": ...}
    prefixed = {"bert." + k: v for k, v in hf_state.items()}
    prefixed["cls.predictions.bias"] = torch.zeros(30522)
    torch.save(prefixed, tmp_path / "pytorch_model.bin")
    ours, _ = minilm_pair
    torch.save(ours.state_dict(), tmp_path / "original_format.pth")
    torch.save({"module." + k: v for k, v in ours.state_dict().items()}, tmp_path / "dp.pth")
    torch.save({"model": ours.state_dict(), "step": torch.tensor(3)}, tmp_path / "train.pth")
    save_file({k: v.contiguous() for k, v in ours.state_dict().items()}, str(tmp_path / "ours.safetensors"))
    for path in [minilm_dir / "model.safetensors", tmp_path / "pytorch_model.bin", tmp_path / "original_format.pth",
                 tmp_path / "dp.pth", tmp_path / "train.pth", tmp_path / "ours.safetensors"]:
        pooled = _pooled_after_loading(minilm_dir, path, padded_pairs)
        assert torch.equal(pooled, minilm_reference_output), path.name


def test_original_format_keys_use_gamma_beta(minilm_pair):
    ours, _ = minilm_pair
    keys = set(ours.state_dict())
    assert "embeddings.LayerNorm.gamma" in keys and "encoder.layer.0.output.LayerNorm.beta" in keys
    assert not any(k.endswith("LayerNorm.weight") for k in keys)


def test_adapter_model_keeps_init_for_missing_adapters_and_logs_one_line(minilm_dir, caplog):
    config = BertConfig.from_json_file(minilm_dir / "config.json").replace(
        mult=True, pals=True, hidden_size_aug=48, num_tasks=2)
    torch.manual_seed(0)
    model = BertForMultiTask(config, [2, 1])
    adapter_before = model.bert.encoder.mult_aug_dense[1].weight.clone()
    with caplog.at_level(logging.INFO, logger="checkpointing"):
        report = load_pretrained_weights(model, minilm_dir)
    assert torch.equal(model.bert.encoder.mult_aug_dense[1].weight, adapter_before)
    assert any("classifier" in key for key in report.kept_init)
    assert all(modeling.is_task_specific(key) for key in report.kept_init)
    assert len(report.loaded) == len(BertModel(BertConfig.from_json_file(minilm_dir / "config.json")).state_dict())
    lines = [r.getMessage() for r in caplog.records if r.name == "checkpointing"]
    assert len(lines) == 1 and "keep their initialisation" in lines[0]


def _minilm_state(minilm_dir):
    from safetensors.torch import load_file
    return load_file(str(minilm_dir / "model.safetensors"))


def test_missing_bert_weight_is_an_error(tmp_path, minilm_dir):
    state = _minilm_state(minilm_dir)
    del state["encoder.layer.3.attention.self.key.weight"]
    torch.save(state, tmp_path / "missing.bin")
    model = BertModel(BertConfig.from_json_file(minilm_dir / "config.json"))
    with pytest.raises(CheckpointError, match=r"missing BERT weight 'encoder\.layer\.3\.attention\.self\.key\.weight'"):
        load_pretrained_weights(model, tmp_path / "missing.bin")


def test_shape_mismatch_is_an_error(tmp_path, minilm_dir):
    state = _minilm_state(minilm_dir)
    state["pooler.dense.weight"] = torch.zeros(384, 383)
    torch.save(state, tmp_path / "shape.bin")
    model = BertModel(BertConfig.from_json_file(minilm_dir / "config.json"))
    with pytest.raises(CheckpointError, match=r"'pooler\.dense\.weight' has shape \(384, 383\), the model expects \(384, 384\)"):
        load_pretrained_weights(model, tmp_path / "shape.bin")


def test_unexpected_bert_weight_is_an_error(tmp_path, minilm_dir):
    state = _minilm_state(minilm_dir)
    state["encoder.layer.6.output.dense.weight"] = torch.zeros(384, 1536)
    torch.save(state, tmp_path / "deeper.bin")
    model = BertModel(BertConfig.from_json_file(minilm_dir / "config.json"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'encoder\.layer\.6\.output\.dense\.weight'"):
        load_pretrained_weights(model, tmp_path / "deeper.bin")


def test_missing_and_empty_checkpoints(tmp_path):
    model = BertModel(tiny_config())
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_pretrained_weights(model, tmp_path / "absent.bin")
    with pytest.raises(CheckpointError, match="folder holds none of"):
        load_pretrained_weights(model, tmp_path)
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_pretrained_weights(model, tmp_path / "garbage.safetensors")


class _RunsCodeOnLoad:
    """Unpickling this calls os.system; a safe loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.bin"
    with open(path, "wb") as handle:
        pickle.dump({"embeddings.word_embeddings.weight": _RunsCodeOnLoad(marker)}, handle)
    with pytest.raises(CheckpointError, match="refused or unreadable checkpoint"):
        load_pretrained_weights(BertModel(tiny_config()), path)
    assert not marker.exists()


@pytest.mark.parametrize("config_name", ["minilm_top_attn_config.json", "minilm_top_bert_layer_config.json"])
def test_layer_norm_init_standard_sets_only_the_unloaded_layer_norms(repo_root, minilm_dir, config_name, caplog):
    from safetensors.torch import load_file

    import training

    pretrained = load_file(str(minilm_dir / "model.safetensors"))
    config = BertConfig.from_json_file(repo_root / "configs" / config_name)
    model = training.build_model(config, ["sst", "rte"], str(minilm_dir), False, layer_norm_init="standard")
    checked_top = checked_loaded = 0
    for name, param in model.named_parameters():
        if not name.endswith(("gamma", "beta")):
            continue
        hf_name = name[len("bert."):].replace("gamma", "weight").replace("beta", "bias")
        if hf_name in pretrained:  # loaded from the checkpoint: the pretrained values
            assert torch.equal(param.detach(), pretrained[hf_name]), name
            checked_loaded += 1
        else:  # task-specific: gamma 1, beta 0
            assert torch.all(param == (1.0 if name.endswith("gamma") else 0.0)), name
            checked_top += 1
    assert checked_loaded == 2 * (1 + 2 * config.num_hidden_layers) and checked_top > 0

    with caplog.at_level(logging.WARNING):
        original = training.build_model(config, ["sst", "rte"], str(minilm_dir), False)
    assert "--layer_norm_init standard" in caplog.text
    top_gammas = torch.cat([p.detach().flatten() for n, p in original.named_parameters()
                            if n.endswith("gamma") and n[len("bert."):].replace("gamma", "weight") not in pretrained])
    assert top_gammas.abs().max() < 0.2 and 0.01 < top_gammas.std() < 0.03  # N(0, 0.02), the original's
