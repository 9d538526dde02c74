"""kernels.py: the fast kernels compute what the plain ones compute, and the choice is
made when the model is built (``kernels=Kernels.plain()``), not by global state.

fp32: within 1e-5 (in eval mode, where dropout is the identity: bit for bit). bf16
(plain torch autocast): the bound is stated at each test. Timing is not tested here:
benchmarks/bench.py --fast-paths measures it.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

import glue
import kernels
import modeling
from checkpointing import load_pretrained_weights
from kernels import Kernels, set_kernels
from modeling import BertConfig, BertForMultiTask, BertModel

FP32_TOLERANCE = 1e-5


def padded_batch(vocab_size, lengths, width=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.randint(1, vocab_size, (len(lengths), width), generator=generator)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    types = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = 0
        types[row, length // 2:length] = 1
    return ids, types, mask


def max_difference(first, second):
    return max((a.float() - b.float()).abs().max().item() for a, b in zip(first, second))


def max_relative_difference(first, second):
    """Largest difference of tensor pairs, each relative to its largest entry (if above 1):
    gradients summed over many positions reach tens, where fp32 keeps ~7 digits."""
    return max((a.float() - b.float()).abs().max().item() / max(1.0, b.abs().max().item())
               for a, b in zip(first, second))


def kernels_of(model):
    return {module.kernels for module in model.modules() if isinstance(getattr(module, "kernels", None), Kernels)}


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    model = BertModel(config)
    load_pretrained_weights(model, minilm_dir)
    return model.eval()


@pytest.fixture(scope="module")
def plain_minilm(minilm_dir):
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    model = BertModel(config, kernels=Kernels.plain())
    load_pretrained_weights(model, minilm_dir)
    return model.eval()


# ---------------------------------------------------------------------------------------
# The switch: chosen at build time, recorded on the modules
# ---------------------------------------------------------------------------------------

def test_kernels_are_chosen_when_the_model_is_built():
    config = tiny_config(mult=True, pals=True)
    fast = BertForMultiTask(config, [2, 3])
    plain = BertForMultiTask(config, [2, 3], kernels=Kernels.plain())
    assert kernels_of(fast) == {Kernels()} and fast.kernels == Kernels(fast_dropout=True)
    assert kernels_of(plain) == {Kernels.plain()} and Kernels.plain() == Kernels(fast_dropout=False)
    # Every dropout and every attention see the choice (heads' own dropout too).
    assert plain.dropout.kernels == plain.bert.encoder.layer[1].multi_layers[0].attn.kernels == Kernels.plain()
    assert "fast=False" in repr(plain.dropout)
    # set_kernels switches a built model; other models are not affected (no global state).
    assert set_kernels(plain, Kernels()) is plain
    assert kernels_of(plain) == {Kernels()}
    set_kernels(fast, Kernels.plain())
    assert kernels_of(plain) == {Kernels()} and kernels_of(fast) == {Kernels.plain()}
    for head in (modeling.BertForSequenceClassification(config, 2, kernels=Kernels.plain()),
                 modeling.BertForQuestionAnswering(config, kernels=Kernels.plain()),
                 modeling.BertForMultipleChoice(config, 2, kernels=Kernels.plain()),
                 BertModel(config, kernels=Kernels.plain())):
        assert kernels_of(head) == {Kernels.plain()}


def test_kernels_are_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Kernels().fast_dropout = False
    with pytest.raises(TypeError):
        Kernels(fused_qkv=True)  # a dropped fast path is not silently accepted
    with pytest.raises(TypeError):
        set_kernels(BertModel(tiny_config()), "plain")


def test_kernels_keep_the_state_dict_keys():
    config = tiny_config(mult=True, pals=True)
    fast, plain = BertForMultiTask(config, [2, 3]), BertForMultiTask(config, [2, 3], kernels=Kernels.plain())
    keys = list(fast.state_dict())
    assert keys == list(plain.state_dict())
    assert "bert.encoder.layer.0.attention.self.query.weight" in keys
    assert "bert.encoder.layer.0.multi_layers.1.attn.value.bias" in keys
    assert not any("qkv" in key or "kernels" in key for key in keys)


def test_original_positional_signatures_still_work():
    torch.manual_seed(0)
    config = tiny_config(mult=True, pals=True)
    model = BertForMultiTask(config, [2, 1]).eval()
    ids, types, mask = padded_batch(config.vocab_size, [7, 4])
    layers, pooled = model.bert(ids, types, mask, 1)
    assert len(layers) == 2 and pooled.shape == (2, 48)
    logits = model(ids, types, mask, 0, "cola")
    loss, logits_with_loss = model(ids, types, mask, 1, "sts", torch.tensor([0.5, 2.0]))
    assert logits.shape == (2, 2) and logits_with_loss.shape == (2, 1) and loss.dim() == 0
    with pytest.raises(TypeError):
        BertForMultiTask(config, [2, 1], Kernels.plain())  # kernels is keyword only


# ---------------------------------------------------------------------------------------
# Plain against fast: the same model either way
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [{}, {"mult": True, "pals": True}, {"houlsby": True}, {"mult": True},
                                   {"top": True}, {"lhuc": True, "mult": True},
                                   {"houlsby": True, "pals": True}, {"top": True, "bert_lay_top": True}])
def test_plain_and_default_kernels_give_the_same_outputs_in_eval_mode(flags):
    """Built twice under one seed, plain and default kernels: bit for bit the same eval
    outputs, with gradients recorded and without."""
    config = tiny_config(**flags)
    torch.manual_seed(0)
    fast = BertForMultiTask(config, [2, 3]).eval()
    torch.manual_seed(0)
    plain = BertForMultiTask(config, [2, 3], kernels=Kernels.plain()).eval()
    ids, types, mask = padded_batch(config.vocab_size, [13, 6, 9])
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            fast_layers, fast_pooled = fast.bert(ids, types, mask, 1)
            plain_layers, plain_pooled = plain.bert(ids, types, mask, 1)
            fast_logits, plain_logits = fast(ids, types, mask, 1), plain(ids, types, mask, 1)
        assert all(torch.equal(a, b) for a, b in zip(fast_layers, plain_layers))
        assert torch.equal(fast_pooled, plain_pooled) and torch.equal(fast_logits, plain_logits)
    with torch.inference_mode():
        assert torch.equal(fast(ids, types, mask, 0), plain(ids, types, mask, 0))


def test_minilm_fast_and_plain_kernels_agree_in_fp32(minilm, plain_minilm):
    """Whole model, real weights: outputs and gradients (relative to the largest entry of
    each gradient), default kernels against plain ones."""
    ids, types, mask = padded_batch(minilm.config.vocab_size, [17, 9, 4, 12])
    layers, pooled = minilm(ids, types, mask)
    fast_grads = torch.autograd.grad(pooled.square().sum() + layers[2].sum(), list(minilm.parameters()))
    plain_layers, plain_pooled = plain_minilm(ids, types, mask)
    plain_grads = torch.autograd.grad(plain_pooled.square().sum() + plain_layers[2].sum(),
                                      list(plain_minilm.parameters()))
    assert max_difference(layers, plain_layers) <= FP32_TOLERANCE
    assert (pooled - plain_pooled).abs().max().item() <= FP32_TOLERANCE
    assert max_relative_difference(fast_grads, plain_grads) <= FP32_TOLERANCE
    with torch.inference_mode():
        fast_inference = minilm(ids, types, mask)[0]
        plain_inference = plain_minilm(ids, types, mask)[0]
    assert all(torch.equal(a, b) for a, b in zip(fast_inference, plain_inference))



# ---------------------------------------------------------------------------------------
# Padding: dynamic against fixed, and no mask for a batch without padding
# ---------------------------------------------------------------------------------------

def test_dynamic_padding_equals_padding_to_128_on_real_tokens(minilm):
    lengths = [23, 5, 61, 40]
    features = []
    ids, types, _ = padded_batch(minilm.config.vocab_size, lengths, seed=3)
    for row, length in enumerate(lengths):
        features.append(glue.InputFeatures(ids[row, :length].tolist(), types[row, :length].tolist(), 0))
    dynamic = glue.collate_features(features)
    fixed = glue.collate_features(features, pad_to=128)
    assert dynamic["input_ids"].shape[1] == 61 and fixed["input_ids"].shape[1] == 128
    with torch.no_grad():
        short_layers, short_pooled = minilm(dynamic["input_ids"], dynamic["segment_ids"], dynamic["input_mask"])
        long_layers, long_pooled = minilm(fixed["input_ids"], fixed["segment_ids"], fixed["input_mask"])
    real = dynamic["input_mask"].bool()
    for short, long in zip(short_layers, long_layers):
        assert (short[real] - long[:, :61][real]).abs().max().item() <= FP32_TOLERANCE
    assert (short_pooled - long_pooled).abs().max().item() <= FP32_TOLERANCE


def test_batch_without_padding_needs_no_mask(minilm):
    ids, types, mask = padded_batch(minilm.config.vocab_size, [14, 14, 14])
    with torch.no_grad():
        without, pooled_without = minilm(ids, types, mask)  # all ones: the mask is skipped
        extended = modeling.extended_attention_mask(mask, torch.float32)
        hidden = minilm.embeddings(ids, types)
        with_mask = minilm.encoder(hidden, extended)
    assert max_difference(without, with_mask) <= FP32_TOLERANCE


# ---------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------

def test_fast_dropout_statistics():
    torch.manual_seed(0)
    x = torch.ones(1 << 20)
    out = kernels.dropout(x, 0.1)
    kept = (out != 0).float().mean().item()
    levels = round(0.1 * 65536)
    assert abs(kept - (1 - levels / 65536)) < 2e-3
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 65536 / (65536 - levels)))
    assert abs(out.mean().item() - 1.0) < 3e-3  # unbiased: E[out] = x
    # Neighbouring int16 lanes of one 64-bit draw are independent: no lane is biased.
    for lane in range(4):
        assert abs((out[lane::4] != 0).float().mean().item() - kept) < 5e-3


def test_plain_dropout_is_torchs():
    x = torch.randn(6, 50)
    torch.manual_seed(3)
    out = kernels.dropout(x, 0.2, fast=False)
    torch.manual_seed(3)
    assert torch.equal(out, F.dropout(x, 0.2, True))
    layer = kernels.Dropout(0.2)
    layer.kernels = Kernels.plain()
    torch.manual_seed(3)
    assert torch.equal(layer(x), out)


def test_fast_dropout_is_reproducible_and_off_in_eval():
    x = torch.randn(4, 33, 7)
    torch.manual_seed(5)
    first = kernels.dropout(x, 0.3)
    torch.manual_seed(5)
    second = kernels.dropout(x, 0.3)
    assert torch.equal(first, second)
    assert kernels.dropout(x, 0.3, training=False) is x
    assert kernels.dropout(x, 0.0) is x
    layer = kernels.Dropout(0.3).eval()
    assert layer(x) is x


def test_fast_dropout_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(5, 9, requires_grad=True)
    out = kernels.dropout(x, 0.25)
    (grad,) = torch.autograd.grad(out.sum(), x)
    scale = 65536 / (65536 - round(0.25 * 65536))
    expected = (out != 0).float() * scale
    assert torch.allclose(grad, expected)
    assert torch.allclose(out, x.detach() * expected)


def test_attention_with_dropout_equals_the_formula_with_the_same_mask():
    """The explicit CPU attention path (training) against softmax/mask/dropout written out."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, requires_grad=True) for _ in range(3))
    mask = modeling.extended_attention_mask(torch.tensor([[1] * 10, [1] * 7 + [0] * 3]), torch.float32)
    torch.manual_seed(7)
    fast = kernels.attention(q, k, v, mask, dropout_p=0.1)
    fast_grads = torch.autograd.grad(fast.square().sum(), [q, k, v])
    torch.manual_seed(7)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + mask, dim=-1)
    mask, scale = kernels.dropout_mask(probs, 0.1)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    expected = (probs * mask * scale) @ v
    expected_grads = torch.autograd.grad(expected.square().sum(), [q, k, v])
    assert (fast - expected).abs().max().item() <= FP32_TOLERANCE
    assert max_difference(fast_grads, expected_grads) <= FP32_TOLERANCE


def test_attention_without_dropout_equals_the_formula():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    mask = modeling.extended_attention_mask(torch.tensor([[1] * 10, [1] * 4 + [0] * 6]), torch.float32)
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + mask, dim=-1) @ v
    for fast in (True, False):
        assert (kernels.attention(q, k, v, mask, fast_dropout=fast) - expected).abs().max().item() <= FP32_TOLERANCE
    assert (kernels.attention(q, k, v, None) - torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
            ).abs().max().item() <= FP32_TOLERANCE


def test_training_step_with_plain_dropout_matches_fast_dropout_in_distribution():
    """Both dropouts train: same loss scale, finite gradients on every shared weight."""
    config = tiny_config(mult=True, pals=True)
    ids, types, mask = padded_batch(config.vocab_size, [9, 5, 7])
    labels = torch.tensor([0, 1, 1])
    for choice in (Kernels(), Kernels.plain()):
        torch.manual_seed(0)
        model = BertForMultiTask(config, [2, 2], kernels=choice).train()
        loss, _ = model(ids, types, mask, 1, labels=labels)
        loss.backward()
        assert torch.isfinite(loss)
        assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# bf16: plain torch autocast (no kernel of our own)
# ---------------------------------------------------------------------------------------

BF16_MODEL_BOUND = 0.08  # max |bf16 - fp32| on MiniLM hidden states (values up to ~10)


def test_minilm_under_bf16_autocast_stays_close_to_fp32(minilm):
    """Every layer within 0.08 of fp32 (hidden states reach ~10; measured errors are
    about 0.02-0.03)."""
    ids, types, mask = padded_batch(minilm.config.vocab_size, [30, 12, 25, 7], seed=2)
    real = mask.bool()
    with torch.no_grad():
        reference, reference_pooled = minilm(ids, types, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layers, pooled = minilm(ids, types, mask)
    error = max((a.float() - b)[real].abs().max().item() for a, b in zip(layers, reference))
    assert error <= BF16_MODEL_BOUND
    assert (pooled.float() - reference_pooled).abs().max().item() <= BF16_MODEL_BOUND


def test_minilm_bf16_training_gradients_stay_close_to_fp32(minilm_dir):
    """Gradients of a training loss (dropout off) under bf16 autocast: within 5% (norm) of
    fp32 for every weight matrix of the encoder, and fp32 themselves."""
    config = BertConfig.from_json_file(minilm_dir / "config.json").replace(hidden_dropout_prob=0.0,
                                                                           attention_probs_dropout_prob=0.0)
    model = modeling.BertForSequenceClassification(config, 2)
    load_pretrained_weights(model, minilm_dir)
    model.train()
    ids, types, mask = padded_batch(config.vocab_size, [30, 12, 25, 7], seed=4)
    labels = torch.tensor([0, 1, 1, 0])

    def gradients(bf16):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model(ids, types, mask, labels=labels)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and p.dim() == 2
                and "encoder" in n}

    reference = gradients(False)
    got = gradients(True)
    for name, want in reference.items():
        assert got[name].dtype == torch.float32
        assert (got[name] - want).norm() <= 0.05 * want.norm() + 1e-6, name


def test_layer_norm_normalises_low_precision_input_in_fp32():
    torch.manual_seed(0)
    layer_norm = modeling.BERTLayerNorm(tiny_config())
    x = (torch.randn(2, 5, 48) * 30 + 100).bfloat16()
    out = layer_norm(x)
    assert out.dtype == torch.float32
    assert (out - F.layer_norm(x.float(), (48,), layer_norm.gamma, layer_norm.beta, 1e-12)).abs().max() <= 1e-6


def test_mask_is_built_once_in_the_attention_dtype():
    reference = torch.zeros(1)
    assert modeling.attention_mask_dtype(reference) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert modeling.attention_mask_dtype(reference) == torch.bfloat16


# ---------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------

def test_compiled_model_equals_eager():
    """compile_model gives the eager numbers: forward, and a training step's gradients
    (dropout off). One small layer with PALs, to keep the compilation short. It switches
    the model to torch's dropout, in eager calls too (the modules are shared)."""
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    config = tiny_config(mult=True, pals=True, num_hidden_layers=1, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    model = BertForMultiTask(config, [2, 2]).train()
    compiled = kernels.compile_model(model)
    assert kernels_of(model) == {Kernels.plain()}
    ids, types, mask = padded_batch(config.vocab_size, [9, 5, 7])
    labels = torch.tensor([0, 1, 1])
    loss, logits = model(ids, types, mask, 1, labels=labels)
    eager_grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    compiled_loss, compiled_logits = compiled(ids, types, mask, 1, labels=labels)
    compiled_grads = torch.autograd.grad(compiled_loss, list(model.parameters()), allow_unused=True)
    assert (logits - compiled_logits).abs().max().item() <= FP32_TOLERANCE
    assert abs(loss.item() - compiled_loss.item()) <= FP32_TOLERANCE
    for eager_grad, compiled_grad in zip(eager_grads, compiled_grads):
        assert (eager_grad is None) == (compiled_grad is None)
        if eager_grad is not None:
            assert (eager_grad - compiled_grad).abs().max().item() <= FP32_TOLERANCE
