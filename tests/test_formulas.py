"""Every adapter and module on top, from raw weights.

The expected outputs below are written with F.linear, F.gelu, a hand-written LayerNorm,
a hand-written softmax and tensor indexing, reading the weights straight from the state
dict by key: nothing of modeling.py is called to build them. They are compared with each
module on its own, then with the whole model (embeddings, one or two layers with the
adapters, the module on top, pooler, the task's head) for every architecture and task.

Weights are random everywhere (biases, LayerNorm gamma and beta, LHUC vectors too: the
original initialisation leaves those at 0 or 1, where a missing term would not show), the
batch has padding and both token types, and everything runs in float64, so agreement is
to 1e-10: a formula that differs anywhere (a GELU missing, a LayerNorm in the wrong place,
the wrong input to an adapter, another task's weights) is far outside that.

What these tests cannot see: dropout (off in eval mode; tests/test_kernels.py and
tests/test_dropout_statistics.py), and whether the formulas are the paper's: they are the
ones documented in modeling.py, which follow the original code.
"""
from __future__ import annotations

import math

import conftest
import pytest
import torch
import torch.nn.functional as F

import modeling
from modeling import BertConfig, BertForMultiTask

TOLERANCE = 1e-10
TASK_LABELS = [2, 3, 1]
PAL_HEADS = 6
TOP_HEADS = 12
TOP_BLOCKS = 6


def tiny_config(**flags) -> BertConfig:
    return conftest.tiny_config(**{"num_tasks": len(TASK_LABELS), **flags})


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """float64, every parameter random (std 0.3; LayerNorm gamma around 1)."""
    generator = torch.Generator().manual_seed(seed)
    module.double().eval()
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64) * 0.3
            param.copy_(noise + 1.0 if name.endswith("gamma") else noise)
    return module


def weights(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The module's state dict (detached), every key under ``prefix``."""
    return {prefix + key: tensor.detach() for key, tensor in module.state_dict().items()}


def padded_batch(config: BertConfig, lengths=(7, 4, 6), seed=1):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, config.vocab_size, (len(lengths), width), generator=generator)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        types[row, length // 2:length] = 1
        ids[row, length:] = 0
    return ids, types, mask


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    return ((1.0 - mask.double()) * -10000.0)[:, None, None, :]  # [B, 1, 1, T]


def random_hidden(config: BertConfig, width: int | None = None, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 7, width or config.hidden_size, generator=generator, dtype=torch.float64)


def close(got: torch.Tensor, expected: torch.Tensor) -> float:
    return (got - expected).abs().max().item()


# ---------------------------------------------------------------------------------------
# The formulas, on raw weights: w maps state-dict keys to tensors, p is a key prefix
# ---------------------------------------------------------------------------------------

def linear(x, w, p):
    return F.linear(x, w[f"{p}.weight"], w[f"{p}.bias"])


def layer_norm(x, w, p, eps=1e-12):
    """TF-style: biased variance, eps inside the square root, then gamma and beta."""
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return w[f"{p}.gamma"] * (x - mean) / torch.sqrt(variance + eps) + w[f"{p}.beta"]


def softmax(x):
    exp = torch.exp(x - x.max(-1, keepdim=True).values)
    return exp / exp.sum(-1, keepdim=True)


def multi_head_attention(x, w, p, heads, mask):
    """softmax(Q Kᵀ / sqrt(d) + mask) V per head, heads concatenated; no output matrix."""
    batch, length, width = x.shape
    size = width // heads

    def split(t):
        return t.reshape(batch, length, heads, size).transpose(1, 2)  # [B, n, T, d]

    q, k, v = (split(linear(x, w, f"{p}.{name}")) for name in ("query", "key", "value"))
    scores = q @ k.transpose(-1, -2) / math.sqrt(size)
    if mask is not None:
        scores = scores + mask
    return (softmax(scores) @ v).transpose(1, 2).reshape(batch, length, width)


def low_rank(h, w, p):
    """W_D gelu(W_E h)."""
    return linear(F.gelu(linear(h, w, f"{p}.aug_dense")), w, f"{p}.aug_dense2")


def pal(h, w, p, mask, projections):
    """gelu(V_D MHA_6(V_E h)), V_E and V_D the task's shared pair at ``projections``
    (encoder.mult_aug_dense.<t>, encoder.mult_aug_dense2.<t>)."""
    down, up = projections
    return F.gelu(linear(multi_head_attention(linear(h, w, down), w, f"{p}.attn", PAL_HEADS, mask), w, up))


def lhuc(h, w, p):
    return h * 2.0 * torch.sigmoid(w[f"{p}.lhuc"])


def bert_layer(x, w, p, config, mask, task, shared_pals=None):
    """One layer with whatever adapters the config asks for (modeling.BERTLayer's docstring)."""
    def adapter(h, key):  # the registered adapter at a position
        if config.pals:
            return pal(h, w, key, mask, shared_pals)
        return low_rank(h, w, key)

    attended = linear(multi_head_attention(x, w, f"{p}.attention.self", config.num_attention_heads, mask),
                      w, f"{p}.attention.output.dense")
    if config.houlsby:  # low-rank adapter after the attention output, on that output
        attended = attended + low_rank(attended, w, f"{p}.attention.output.multi_layers.{task}")
    a = layer_norm(attended + x, w, f"{p}.attention.output.LayerNorm")
    ffn = linear(F.gelu(linear(a, w, f"{p}.intermediate.dense")), w, f"{p}.output.dense")
    if config.mult:  # beside the whole layer, reading the layer input x
        extra = adapter(x, f"{p}.multi_layers.{task}")
        if config.lhuc:
            extra = lhuc(extra, w, f"{p}.multi_lhuc.{task}")
        return layer_norm(ffn + a + extra, w, f"{p}.output.LayerNorm")
    if config.houlsby:  # FFN position: reads the FFN input a
        ffn = ffn + adapter(a, f"{p}.output.multi_layers.{task}")
    out = layer_norm(ffn + a, w, f"{p}.output.LayerNorm")
    if config.lhuc:
        out = lhuc(out, w, f"{p}.multi_lhuc.{task}")
    return out


def top_attention(h, w, task, mask):
    """D · B_6(... B_1(E h)), each B: 12-head attention over A, output matrix, residual, LayerNorm."""
    x = linear(h, w, f"encoder.mult_dense.{task}")
    for block in range(TOP_BLOCKS):
        p = f"encoder.multi_layers.{task}.{block}"
        attended = linear(multi_head_attention(x, w, f"{p}.self", TOP_HEADS, mask), w, f"{p}.output.dense")
        x = layer_norm(attended + x, w, f"{p}.output.LayerNorm")
    return linear(x, w, f"encoder.mult_dense2.{task}")


def whole_model(w, config, ids, types, mask, task):
    """BertForMultiTask from raw weights: (every layer's output, pooled output, logits)."""
    w = {key[len("bert."):] if key.startswith("bert.") else key: t for key, t in w.items()}
    length = ids.shape[1]
    embedded = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
                + w["embeddings.token_type_embeddings.weight"][types])
    h = layer_norm(embedded, w, "embeddings.LayerNorm")
    extended = additive_mask(mask)
    shared = (f"encoder.mult_aug_dense.{task}", f"encoder.mult_aug_dense2.{task}")
    layers = []
    for index in range(config.num_hidden_layers):
        h = bert_layer(h, w, f"encoder.layer.{index}", config, extended, task, shared)
        layers.append(h)
    if config.top and config.bert_lay_top:
        layers[-1] = bert_layer(h, w, f"encoder.multi_layers.{task}", config.without_adapters(), extended, task)
    elif config.top:
        layers[-1] = top_attention(h, w, task, extended)
    pooled = torch.tanh(linear(layers[-1][:, 0], w, "pooler.dense"))
    return layers, pooled, linear(pooled, w, f"classifier.{task}")


# ---------------------------------------------------------------------------------------
# Each module on its own
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra_dim", [None, 10])
def test_low_rank_adapter(extra_dim):
    config = tiny_config(mult=True, extra_dim=extra_dim)
    adapter = randomise(modeling.BERTLowRank(config))
    h = random_hidden(config)
    assert adapter.aug_dense.out_features == (extra_dim or config.hidden_size_aug)
    assert close(adapter(h), low_rank(h, weights(adapter, "x."), "x")) <= TOLERANCE


def test_pal():
    config = tiny_config(mult=True, pals=True)
    adapter = randomise(modeling.BERTPals(config))
    h = random_hidden(config)
    mask = additive_mask(padded_batch(config)[2])
    expected = pal(h, weights(adapter, "x."), "x", mask, ("x.aug_dense", "x.aug_dense2"))
    assert close(adapter(h, mask), expected) <= TOLERANCE


def test_lhuc():
    config = tiny_config(lhuc=True)
    module = randomise(modeling.BERTLhuc(config))
    h = random_hidden(config)
    assert close(module(h), lhuc(h, weights(module, "x."), "x")) <= TOLERANCE


def test_houlsby_attention_position():
    """LN(o + W_D gelu(W_E o) + x), o = W_O c: the adapter reads the attention output."""
    config = tiny_config(houlsby=True)
    module = randomise(modeling.BERTSelfOutput(config, houlsby=True))
    w = weights(module, "x.")
    context, x = random_hidden(config, seed=3), random_hidden(config, seed=4)
    o = linear(context, w, "x.dense")
    expected = layer_norm(o + low_rank(o, w, "x.multi_layers.1") + x, w, "x.LayerNorm")
    assert close(module(context, x, None, 1), expected) <= TOLERANCE


@pytest.mark.parametrize("pals", [False, True])
def test_houlsby_ffn_position(pals):
    """LN(W_2 f + adapter(a) + a): the adapter (low-rank, or a PAL) reads the FFN input a."""
    config = tiny_config(houlsby=True, pals=pals, extra_dim=10 if pals else None)
    module = randomise(modeling.BERTOutput(config, houlsby=True))
    w = weights(module, "x.")
    intermediate, a = random_hidden(config, config.intermediate_size, seed=3), random_hidden(config, seed=4)
    mask = additive_mask(padded_batch(config)[2])
    if pals:
        adapter = pal(a, w, "x.multi_layers.2", mask, ("x.multi_layers.2.aug_dense", "x.multi_layers.2.aug_dense2"))
    else:
        adapter = low_rank(a, w, "x.multi_layers.2")
    expected = layer_norm(linear(intermediate, w, "x.dense") + adapter + a, w, "x.LayerNorm")
    assert close(module(intermediate, a, mask, 2), expected) <= TOLERANCE


def test_top_attention_block():
    """One of the six blocks on top: 12 heads over A, output matrix, residual, LayerNorm over A."""
    config = tiny_config(top=True)
    block = randomise(modeling.BERTAttention(config, TOP_HEADS))
    w = weights(block, "b.")
    x = random_hidden(config, config.hidden_size_aug)
    mask = additive_mask(padded_batch(config)[2])
    attended = linear(multi_head_attention(x, w, "b.self", TOP_HEADS, mask), w, "b.output.dense")
    assert close(block(x, mask), layer_norm(attended + x, w, "b.output.LayerNorm")) <= TOLERANCE


@pytest.mark.parametrize("bert_layer_on_top", [False, True])
def test_module_on_top(bert_layer_on_top):
    """The task's module on top of the encoder, on the last layer's output."""
    config = tiny_config(top=True, bert_lay_top=bert_layer_on_top)
    encoder = randomise(modeling.BERTEncoder(config))
    w = weights(encoder, "encoder.")
    h = random_hidden(config)
    mask = additive_mask(padded_batch(config)[2])
    for task in range(config.num_tasks):
        if bert_layer_on_top:
            expected = bert_layer(h, w, f"encoder.multi_layers.{task}", config.without_adapters(), mask, task)
        else:
            expected = top_attention(h, w, task, mask)
        assert close(encoder._run_top(task, h, mask), expected) <= TOLERANCE


# ---------------------------------------------------------------------------------------
# The whole model, every architecture, every task
# ---------------------------------------------------------------------------------------

ARCHITECTURES = {
    "bert": {},
    "pals": {"mult": True, "pals": True},
    "low_rank": {"mult": True},
    "low_rank_extra_dim": {"mult": True, "extra_dim": 10},
    "houlsby": {"houlsby": True},
    "houlsby_plus_pals": {"houlsby": True, "pals": True, "extra_dim": 10},
    "top_attention": {"top": True},
    "top_bert_layer": {"top": True, "bert_lay_top": True},
    "lhuc": {"lhuc": True},
    "lhuc_pals": {"lhuc": True, "mult": True, "pals": True},
    "lhuc_low_rank": {"lhuc": True, "mult": True},
    "lhuc_houlsby": {"lhuc": True, "houlsby": True},
}


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_whole_model(name, layers):
    config = tiny_config(num_hidden_layers=layers, **ARCHITECTURES[name])
    model = randomise(BertForMultiTask(config, TASK_LABELS))
    ids, types, mask = padded_batch(config)
    w = weights(model)
    real = mask.bool()
    with torch.no_grad():
        for task in range(config.num_tasks):
            expected_layers, expected_pooled, expected_logits = whole_model(w, config, ids, types, mask, task)
            got_layers, got_pooled = model.bert(ids, types, mask, task)
            assert len(got_layers) == layers
            for got, expected in zip(got_layers, expected_layers):
                assert close(got[real], expected[real]) <= TOLERANCE, (name, task)
            assert close(got_pooled, expected_pooled) <= TOLERANCE, (name, task)
            assert close(model(ids, types, mask, task), expected_logits) <= TOLERANCE, (name, task)


def test_the_tasks_differ():
    """Sanity of the comparison above: with random weights, each task's output is its own."""
    config = tiny_config(mult=True, pals=True)
    model = randomise(BertForMultiTask(config, [2, 2, 2]))
    ids, types, mask = padded_batch(config)
    with torch.no_grad():
        pooled = [model.bert(ids, types, mask, task)[1] for task in range(3)]
    assert close(pooled[0], pooled[1]) > 1e-3 and close(pooled[1], pooled[2]) > 1e-3
