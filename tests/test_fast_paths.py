"""The fast paths of modeling.py compute what the plain paths compute.

fp32: within 1e-5. bf16: the bound is stated at each test (bf16 keeps 8 significant
bits, so one rounding is a relative error of up to 2^-8 = 0.4%). Timing is not tested
here: benchmarks/bench.py measures it.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import glue
import modeling
from modeling import BertConfig, BertForMultiTask, BertModel, fast_paths, load_pretrained_weights

FP32_TOLERANCE = 1e-5


def tiny_config(**flags):
    values = dict(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
                  hidden_size_aug=24, num_tasks=2)
    values.update(flags)
    return BertConfig(**values)


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


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    config = BertConfig.from_json_file(minilm_dir / "config.json")
    model = BertModel(config)
    load_pretrained_weights(model, minilm_dir)
    return model.eval()


# ---------------------------------------------------------------------------------------
# Fused Q/K/V
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [None, modeling.PAL_HEADS])
def test_fused_qkv_equals_separate_projections(heads):
    torch.manual_seed(0)
    config = tiny_config()
    attention = modeling.BERTSelfAttention(config, heads).eval()
    width = config.hidden_size_aug if heads else config.hidden_size
    hidden = torch.randn(3, 11, width, requires_grad=True)
    mask = modeling.extended_attention_mask(torch.tensor([[1] * 11, [1] * 6 + [0] * 5, [1] * 2 + [0] * 9]),
                                            torch.float32)
    fused = attention(hidden, mask)
    fused_grads = torch.autograd.grad(fused.square().sum(), [hidden, *attention.parameters()])
    with fast_paths(fused_qkv=False):
        plain = attention(hidden, mask)
        plain_grads = torch.autograd.grad(plain.square().sum(), [hidden, *attention.parameters()])
    assert (fused - plain).abs().max().item() <= FP32_TOLERANCE
    assert max_difference(fused_grads, plain_grads) <= FP32_TOLERANCE


def test_fast_paths_keep_the_state_dict_keys():
    model = BertForMultiTask(tiny_config(mult=True, pals=True), [2, 3])
    keys = list(model.state_dict())
    assert "bert.encoder.layer.0.attention.self.query.weight" in keys
    assert "bert.encoder.layer.0.multi_layers.1.attn.value.bias" in keys
    assert not any("qkv" in key for key in keys)
    assert all(isinstance(m, torch.nn.Linear) for m in model.modules() if isinstance(m, modeling.Linear))


def test_minilm_fast_and_plain_paths_agree_in_fp32(minilm):
    """Whole model, real weights: outputs and gradients (relative to the largest entry of
    each gradient), fast paths on against all off."""
    ids, types, mask = padded_batch(minilm.config.vocab_size, [17, 9, 4, 12])
    layers, pooled = minilm(ids, types, mask)
    fast_grads = torch.autograd.grad(pooled.square().sum() + layers[2].sum(), list(minilm.parameters()))
    with fast_paths(fused_qkv=False, fast_dropout=False):
        plain_layers, plain_pooled = minilm(ids, types, mask)
        plain_grads = torch.autograd.grad(plain_pooled.square().sum() + plain_layers[2].sum(),
                                          list(minilm.parameters()))
    assert max_difference(layers, plain_layers) <= FP32_TOLERANCE
    assert (pooled - plain_pooled).abs().max().item() <= FP32_TOLERANCE
    assert max_relative_difference(fast_grads, plain_grads) <= FP32_TOLERANCE


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
    out = modeling.dropout(x, 0.1)
    kept = (out != 0).float().mean().item()
    levels = round(0.1 * 65536)
    assert abs(kept - (1 - levels / 65536)) < 2e-3
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 65536 / (65536 - levels)))
    assert abs(out.mean().item() - 1.0) < 3e-3  # unbiased: E[out] = x
    # Neighbouring int16 lanes of one 64-bit draw are independent: no lane is biased.
    for lane in range(4):
        assert abs((out[lane::4] != 0).float().mean().item() - kept) < 5e-3


def test_fast_dropout_is_reproducible_and_off_in_eval():
    x = torch.randn(4, 33, 7)
    torch.manual_seed(5)
    first = modeling.dropout(x, 0.3)
    torch.manual_seed(5)
    second = modeling.dropout(x, 0.3)
    assert torch.equal(first, second)
    assert modeling.dropout(x, 0.3, training=False) is x
    assert modeling.dropout(x, 0.0) is x
    layer = modeling.Dropout(0.3).eval()
    assert layer(x) is x


def test_fast_dropout_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(5, 9, requires_grad=True)
    out = modeling.dropout(x, 0.25)
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
    fast = modeling.attention(q, k, v, mask, dropout_p=0.1)
    fast_grads = torch.autograd.grad(fast.square().sum(), [q, k, v])
    torch.manual_seed(7)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8) + mask, dim=-1)
    mask, scale = modeling._dropout_mask(probs, 0.1)
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
    assert (modeling.attention(q, k, v, mask) - expected).abs().max().item() <= FP32_TOLERANCE
    assert (modeling.attention(q, k, v, None) - torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1) @ v
            ).abs().max().item() <= FP32_TOLERANCE


def test_training_step_with_plain_dropout_matches_fast_dropout_in_distribution():
    """Both dropouts train: same loss scale, finite gradients on every shared weight."""
    torch.manual_seed(0)
    config = tiny_config(mult=True, pals=True)
    model = BertForMultiTask(config, [2, 2]).train()
    ids, types, mask = padded_batch(config.vocab_size, [9, 5, 7])
    labels = torch.tensor([0, 1, 1])
    for fast in (True, False):
        with fast_paths(fast_dropout=fast):
            model.zero_grad(set_to_none=True)
            loss, _ = model(ids, types, mask, 1, labels=labels)
            loss.backward()
        assert torch.isfinite(loss)
        assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# bf16
# ---------------------------------------------------------------------------------------

BF16_ULP = 2.0 ** -7  # relative spacing of bf16 numbers in [1, 2); one rounding <= half of it


def bf16_round(t):
    return t.bfloat16().float()


def test_bf16_linear_via_fp32_equals_native_bf16_within_one_rounding():
    """Bound: |fp32-route - native| <= 2^-7 |native| + 1e-3 (both round one fp32 sum to bf16)."""
    torch.manual_seed(0)
    layer = modeling.Linear(64, 48)
    x = torch.randn(5, 7, 64, requires_grad=True)
    results = {}
    for mode in ("fp32", "native"):
        with fast_paths(bf16_matmul=mode), torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        assert out.dtype == torch.bfloat16
        grads = torch.autograd.grad(out.float().square().sum(), [x, layer.weight, layer.bias])
        results[mode] = (out.float(), grads)
    fp32_out, native_out = results["fp32"][0], results["native"][0]
    assert ((fp32_out - native_out).abs() <= BF16_ULP * native_out.abs() + 1e-3).all()
    # Exactly a bf16 rounding of the fp32 product of the bf16-rounded operands.
    exact = F.linear(bf16_round(x.detach()), bf16_round(layer.weight.detach()), bf16_round(layer.bias.detach()))
    assert torch.equal(fp32_out, bf16_round(exact)) or (fp32_out - bf16_round(exact)).abs().max() <= BF16_ULP * exact.abs().max()
    # Gradients: the fp32 route keeps fp32 gradients; both within 2% (norm) of the fp32 ones.
    reference = torch.autograd.grad(F.linear(x, layer.weight, layer.bias).square().sum(), [x, layer.weight, layer.bias])
    for mode in ("fp32", "native"):
        for got, want in zip(results[mode][1], reference):
            assert got.dtype == want.dtype
            assert (got.float() - want).norm() <= 0.02 * want.norm()


BF16_MODEL_BOUND = 0.08  # max |bf16 - fp32| on MiniLM hidden states (values up to ~10)


def test_minilm_bf16_paths_stay_close_to_fp32(minilm):
    """Whole model under bf16 autocast, fp32-route and native bf16 GEMMs, against fp32.

    Bound: every layer within 0.08 of fp32 (hidden states reach ~10; measured errors are
    about 0.02-0.03 for both routes), and the fp32 route no worse than 1.5x native + 0.01.
    """
    ids, types, mask = padded_batch(minilm.config.vocab_size, [30, 12, 25, 7], seed=2)
    real = mask.bool()
    with torch.no_grad():
        reference, reference_pooled = minilm(ids, types, mask)
        errors = {}
        for mode in ("fp32", "native"):
            with fast_paths(bf16_matmul=mode), torch.autocast("cpu", dtype=torch.bfloat16):
                layers, pooled = minilm(ids, types, mask)
            errors[mode] = max((a.float() - b)[real].abs().max().item() for a, b in zip(layers, reference))
            assert errors[mode] <= BF16_MODEL_BOUND, (mode, errors[mode])
            assert (pooled.float() - reference_pooled).abs().max().item() <= BF16_MODEL_BOUND
    assert errors["fp32"] <= 1.5 * errors["native"] + 0.01


def test_minilm_bf16_training_gradients_stay_close_to_fp32(minilm_dir):
    """Gradients of a training loss (dropout off) under bf16 autocast: within 5% (norm) of
    fp32 for every weight matrix of the encoder, both routes."""
    config = BertConfig.from_json_file(minilm_dir / "config.json").replace(hidden_dropout_prob=0.0,
                                                                           attention_probs_dropout_prob=0.0)
    model = modeling.BertForSequenceClassification(config, 2)
    load_pretrained_weights(model, minilm_dir)
    model.train()
    ids, types, mask = padded_batch(config.vocab_size, [30, 12, 25, 7], seed=4)
    labels = torch.tensor([0, 1, 1, 0])

    def gradients(mode=None):
        model.zero_grad(set_to_none=True)
        if mode is None:
            loss, _ = model(ids, types, mask, labels=labels)
        else:
            with fast_paths(bf16_matmul=mode), torch.autocast("cpu", dtype=torch.bfloat16):
                loss, _ = model(ids, types, mask, labels=labels)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None and p.dim() == 2
                and "encoder" in n}

    reference = gradients()
    for mode in ("fp32", "native"):
        got = gradients(mode)
        for name, want in reference.items():
            assert got[name].dtype == torch.float32
            assert (got[name] - want).norm() <= 0.05 * want.norm() + 1e-6, (mode, name)


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
        with fast_paths(bf16_matmul="native"):
            assert modeling.attention_mask_dtype(reference) == torch.bfloat16
        with fast_paths(bf16_matmul="fp32"):
            assert modeling.attention_mask_dtype(reference) == torch.float32


def test_fast_path_settings_are_checked_and_restored():
    before = modeling.FAST_PATHS.fused_qkv
    with fast_paths(fused_qkv=not before):
        assert modeling.FAST_PATHS.fused_qkv is (not before)
    assert modeling.FAST_PATHS.fused_qkv is before
    with pytest.raises(TypeError):
        with fast_paths(no_such_path=True):
            pass
    with pytest.raises(ValueError):
        with fast_paths(bf16_matmul="fast"):
            pass
    assert modeling.bf16_matmul_mode() in ("native", "fp32")


# ---------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------

def test_compiled_model_equals_eager():
    """compile_model gives the eager numbers: forward, and a training step's gradients
    (dropout off). One small layer with PALs, to keep the compilation short."""
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    config = tiny_config(mult=True, pals=True, num_hidden_layers=1, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
    model = BertForMultiTask(config, [2, 2]).train()
    compiled = modeling.compile_model(model)
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


def test_fused_weights_are_reused_in_inference_and_follow_weight_changes():
    torch.manual_seed(0)
    config = tiny_config()
    attention = modeling.BERTSelfAttention(config).eval()
    hidden = torch.randn(2, 5, config.hidden_size)
    with torch.no_grad():
        first = attention(hidden, None)
        cached = attention._fused_cache[1]
        attention(hidden, None)
        assert attention._fused_cache[1] is cached  # no new concatenation
        attention.key.weight.add_(0.5)  # an in-place update (optimizer, load_state_dict)
        changed = attention(hidden, None)
        assert attention._fused_cache[1] is not cached
    with fast_paths(fused_qkv=False), torch.no_grad():
        assert (changed - attention(hidden, None)).abs().max().item() <= FP32_TOLERANCE
    assert (changed - first).abs().max().item() > 1e-3
    with torch.inference_mode():
        attention(hidden, None)
    out = attention(hidden, None)  # gradients on: concatenated afresh, cache dropped
    assert out.requires_grad and attention._fused_cache is None


# ---------------------------------------------------------------------------------------
# Inference in place
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [{}, {"mult": True, "pals": True}, {"houlsby": True}])
def test_inference_in_place_equals_the_plain_inference(flags):
    """Without gradients the residual is the GEMM's accumulator and GELU runs in place:
    every layer equals the plain path within 1e-5 (architectures with and without adapters)."""
    torch.manual_seed(0)
    model = BertForMultiTask(tiny_config(**flags), [2, 3]).eval()
    ids, types, mask = padded_batch(model.config.vocab_size, [13, 6, 9])
    with torch.inference_mode():
        fast_layers, fast_pooled = model.bert(ids, types, mask, 1)
        with fast_paths(inference_in_place=False):
            plain_layers, plain_pooled = model.bert(ids, types, mask, 1)
    assert max_difference(fast_layers, plain_layers) <= FP32_TOLERANCE
    assert (fast_pooled - plain_pooled).abs().max().item() <= FP32_TOLERANCE


def test_inference_in_place_is_off_with_gradients_or_active_dropout(minilm):
    """With gradients recorded, or in training mode with dropout, the plain formula runs
    (nothing that autograd keeps is overwritten): a backward pass works and the eval
    outputs with gradients equal those without."""
    ids, types, mask = padded_batch(minilm.config.vocab_size, [11, 7])
    layers, pooled = minilm(ids, types, mask)  # gradients on
    pooled.sum().backward()
    with torch.no_grad():
        no_grad_layers, _ = minilm(ids, types, mask)
    real = mask.bool()  # (padded rows carry ~3e-5 of rounding noise in any fp32 order)
    assert max_difference([a[real] for a in layers], [b[real] for b in no_grad_layers]) <= FP32_TOLERANCE
    dense = modeling.Linear(8, 8)
    dropout = modeling.Dropout(0.5).train()
    x, residual = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with torch.no_grad():
        torch.manual_seed(0)
        out = modeling.residual_dense(dense, x, residual, dropout)
        torch.manual_seed(0)
        expected = dropout(dense(x)) + residual
    assert torch.equal(out, expected)
    minilm.zero_grad(set_to_none=True)
