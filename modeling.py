"""BERT with task-specific adapters for multi-task learning ("BERT and PALs").

One BERT is shared by all tasks; each task adds a few parameters of its own and a
head. The architectures (chosen by flags in ``BertConfig``):

    shared only        plain BERT, one classifier per task
    PALs               mult + pals: a projected attention layer beside every BERT layer,
                       gelu(V_D · MHA_6(V_E · h)), V_E/V_D tied across layers per task
    low-rank           mult: W_D · gelu(W_E · h) beside every layer, untied
    Houlsby            houlsby: low-rank adapters inside both sublayers of every layer
    Houlsby + PALs     houlsby + pals: low-rank after attention, a PAL in FFN position
    top attention      top: 6 projected 12-head attention blocks per task on the encoder
    top BERT layer     top + bert_lay_top: a full extra BERT layer per task on top
    LHUC               lhuc: per-task scaling 2·sigmoid(r) of layer (or adapter) outputs

Shape legend used in comments:
    B  batch size            T  sequence length
    H  hidden_size           A  hidden_size_aug (the adapters' projected width)
    n  attention heads       d  head size (H / n, or A / n inside adapters)

Module and parameter names (``gamma``/``beta``, ``multi_layers``, ``mult_aug_dense`` ...)
match the original code, so state dicts move between the two with a strict load.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

PAL_HEADS = 6  # heads inside a PAL; hard-coded in the original
TOP_ATTENTION_HEADS = 12  # heads inside each projected attention block on top
TOP_ATTENTION_BLOCKS = 6  # projected attention blocks per task on top
MASK_VALUE = -10000.0  # additive attention mask for padding, as in the original

# Every task-specific parameter name contains one of these substrings (the original's
# loader and freezing logic rely on 'aug' and 'mult'; LHUC lives under 'multi_lhuc').
TASK_SPECIFIC_MARKERS = ("aug", "mult")


class ConfigError(ValueError):
    """A configuration that the model cannot be built from (one-line message)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model (one-line message naming the key)."""


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU: x · 0.5 · (1 + erf(x / sqrt(2)))."""
    return F.gelu(x)


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

# Keys of a Hugging Face config.json that carry no meaning for this model.
_IGNORED_HF_KEYS = {
    "architectures", "model_type", "transformers_version", "_name_or_path", "pad_token_id",
    "gradient_checkpointing", "use_cache", "classifier_dropout", "torch_dtype", "dtype",
    "id2label", "label2id", "problem_type", "output_past", "directionality",
    "pooler_fc_size", "pooler_num_attention_heads", "pooler_num_fc_layers",
    "pooler_size_per_head", "pooler_type", "is_decoder", "add_cross_attention",
}


@dataclass
class BertConfig:
    """Configuration of BertModel and its adapters; every key of the original.

    ``vocab_size`` is the only required value. ``hidden_act`` is stored but the model
    always uses the erf GELU, as the original did (only "gelu" is accepted).
    """

    vocab_size: Optional[int]
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 16
    initializer_range: float = 0.02
    pals: bool = False  # adapter type: True = PAL, False = low-rank
    mult: bool = False  # an adapter beside every BERT layer
    top: bool = False  # task-specific module(s) on top of the encoder
    lhuc: bool = False  # task-specific LHUC scaling
    houlsby: bool = False  # adapters inside both sublayers of every layer
    bert_lay_top: bool = False  # with top: a full BERT layer per task on top
    num_tasks: int = 1
    extra_dim: Optional[int] = None  # width of low-rank adapters, if set
    hidden_size_aug: int = 204  # projected width of PALs / low-rank / top attention
    layer_norm_eps: float = 1e-12
    # Keys read from a JSON file that are not fields above, kept for a faithful round trip.
    extra_keys: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.validate()

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def from_dict(cls, json_object: Mapping[str, Any]) -> "BertConfig":
        """Build a config from a dict (original or Hugging Face ``config.json`` keys)."""
        if not isinstance(json_object, Mapping):
            raise ConfigError(f"a config must be a JSON object, got {type(json_object).__name__}")
        field_names = {f.name for f in dataclasses.fields(cls)} - {"extra_keys"}
        known = {k: v for k, v in json_object.items() if k in field_names}
        extra = {k: v for k, v in json_object.items() if k not in field_names}
        if "vocab_size" not in known:
            raise ConfigError("missing key 'vocab_size'")
        _check_hf_keys(extra)
        return cls(**known, extra_keys=extra)

    @classmethod
    def from_json_file(cls, json_file: Union[str, os.PathLike]) -> "BertConfig":
        """Read a config file; errors name the file."""
        try:
            with open(json_file, "r", encoding="utf-8") as reader:
                data = json.load(reader)
        except FileNotFoundError:
            raise ConfigError(f"{json_file}: config file not found") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{json_file}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{json_file}:{err.lineno}: invalid JSON: {err.msg}") from None
        except OSError as err:
            raise ConfigError(f"{json_file}: cannot read config: {err.strerror}") from None
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{json_file}: {err}") from None

    def to_dict(self) -> Dict[str, Any]:
        output = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        extra = output.pop("extra_keys")
        output.update(extra)
        return output

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: Union[str, os.PathLike]) -> None:
        """Write the config atomically (a crash leaves the old file or none, never half)."""
        from checkpointing import atomic_write_text  # (checkpointing imports this module)
        atomic_write_text(path, self.to_json_string())

    def replace(self, **changes) -> "BertConfig":
        """A validated copy with some fields changed (e.g. ``num_tasks``)."""
        return dataclasses.replace(self, **changes)

    # ---- derived facts --------------------------------------------------------------

    @property
    def uses_shared_pals(self) -> bool:
        """PALs whose V_E/V_D are tied across layers (beside layers or in FFN position)."""
        return self.pals and (self.mult or self.houlsby)

    @property
    def uses_top_attention(self) -> bool:
        return self.top and not self.bert_lay_top

    @property
    def low_rank_width(self) -> int:
        return self.extra_dim if self.extra_dim else self.hidden_size_aug

    # ---- validation -----------------------------------------------------------------

    def validate(self) -> None:
        """Raise ConfigError (one line, naming the key) for a config the model cannot build."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size",
                     "num_tasks", "hidden_size_aug"):
            _require_positive_int(name, getattr(self, name))
        if self.extra_dim is not None and self.extra_dim != 0:
            _require_positive_int("extra_dim", self.extra_dim)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ConfigError(f"'{name}' must be a number in [0, 1), got {value!r}")
        for name in ("initializer_range", "layer_norm_eps"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ConfigError(f"'{name}' must be a positive number, got {value!r}")
        for name in ("pals", "mult", "top", "lhuc", "houlsby", "bert_lay_top"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"'{name}' must be true or false, got {getattr(self, name)!r}")
        if self.hidden_act != "gelu":
            raise ConfigError(f"'hidden_act' must be \"gelu\" (the model always uses the erf GELU), "
                              f"got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"'hidden_size' ({self.hidden_size}) is not divisible by "
                              f"'num_attention_heads' ({self.num_attention_heads})")
        self._validate_adapter_combination()

    def _validate_adapter_combination(self) -> None:
        if self.mult and self.houlsby:
            raise ConfigError("'mult' and 'houlsby' cannot both be true: choose adapters beside "
                              "each layer (mult) or inside both sublayers (houlsby)")
        if self.bert_lay_top and not self.top:
            raise ConfigError("'bert_lay_top' needs 'top': true")
        if self.uses_shared_pals and self.hidden_size_aug % PAL_HEADS:
            raise ConfigError(f"'hidden_size_aug' ({self.hidden_size_aug}) must be divisible by "
                              f"{PAL_HEADS}, the number of PAL attention heads")
        if self.uses_top_attention and self.hidden_size_aug % TOP_ATTENTION_HEADS:
            raise ConfigError(f"'hidden_size_aug' ({self.hidden_size_aug}) must be divisible by "
                              f"{TOP_ATTENTION_HEADS}, the number of heads of the attention on top")
        if self.pals and not (self.mult or self.houlsby):
            raise ConfigError("'pals' needs 'mult' or 'houlsby': true (PALs sit beside each layer "
                              "or in the FFN sublayer)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require_positive_int(name: str, value) -> None:
    if value is None:
        raise ConfigError(f"missing key '{name}'")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"'{name}' must be a positive integer, got {value!r}")


def _check_hf_keys(extra: Mapping[str, Any]) -> None:
    """Reject Hugging Face settings that would silently change the architecture."""
    model_type = extra.get("model_type", "bert")
    if model_type != "bert":
        raise ConfigError(f"'model_type' is {model_type!r}; only BERT checkpoints are supported")
    position_type = extra.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ConfigError(f"'position_embedding_type' {position_type!r} is not supported "
                          "(only absolute position embeddings)")


# --------------------------------------------------------------------------------------
# Fast paths
#
# Each one computes what the plain formula computes (tests/test_fast_paths.py checks
# them against each other); ``fast_paths(...)`` switches them off, one by one.
#
#   fused_qkv     Q, K and V from one GEMM: the [width, width] query/key/value weights are
#                 concatenated at run time into one [3·width, width] matrix, so the state
#                 dict keeps its three entries.
#   fast_dropout  CPU dropout masks from 16-bit random integers (four per 64-bit word of
#                 a fast generator seeded from torch's; several times cheaper than
#                 ``bernoulli_``), and attention dropout without SDPA's slow math
#                 fallback. The drop probability is p rounded to a multiple of 2^-16
#                 (0.1 -> 0.100006); kept values are scaled by the exact 1 / (1 - that
#                 probability).
#   bf16_matmul   what bfloat16 autocast does with matrix products on the CPU. A CPU
#                 without bf16 dot-product instructions (AVX512_BF16 or AMX; e.g. Ice
#                 Lake) makes oneDNN emulate bf16 GEMMs at a fraction of the fp32 rate,
#                 which made bf16 training ~2x slower than fp32. "fp32" runs the linear
#                 layers and the attention as fp32 GEMMs on the bf16-rounded operands
#                 instead: a product of two bf16 numbers is exact in fp32, so this is what
#                 a bf16 GEMM with fp32 accumulation computes, at the fp32 rate, and the
#                 activations kept for backward stay bf16. "native" leaves it to
#                 autocast; "auto" (the default) picks "native" exactly when the CPU has
#                 the instructions. The environment variable BERT_PALS_BF16_MATMUL sets
#                 the default.
#   inference_in_place  without gradients (inference, evaluation) and with dropout off:
#                 the residual becomes the output GEMM's accumulator, (residual + bias) +=
#                 x·Wᵀ, instead of a bias copy, the GEMM and a separate sum; and GELU
#                 overwrites its input. One pass and one allocation fewer per residual and
#                 per FFN; the same formula, summed in another order.
#
# ``compile_model`` wraps a model in ``torch.compile`` (optional; eager is the default).
# --------------------------------------------------------------------------------------

BF16_MATMUL_MODES = ("auto", "native", "fp32")


@dataclass
class FastPathSettings:
    fused_qkv: bool = True
    fast_dropout: bool = True
    bf16_matmul: str = "auto"
    inference_in_place: bool = True


FAST_PATHS = FastPathSettings(bf16_matmul=os.environ.get("BERT_PALS_BF16_MATMUL", "auto"))


@contextlib.contextmanager
def fast_paths(**settings):
    """Change fields of ``FAST_PATHS`` inside a ``with`` block (e.g. ``fused_qkv=False``)."""
    names = {f.name for f in dataclasses.fields(FastPathSettings)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unknown fast path setting(s): {', '.join(unknown)}")
    if settings.get("bf16_matmul", "auto") not in BF16_MATMUL_MODES:
        raise ValueError(f"bf16_matmul must be one of {BF16_MATMUL_MODES}, got {settings['bf16_matmul']!r}")
    saved = dataclasses.asdict(FAST_PATHS)
    for name, value in settings.items():
        setattr(FAST_PATHS, name, value)
    try:
        yield FAST_PATHS
    finally:
        for name, value in saved.items():
            setattr(FAST_PATHS, name, value)


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (x86 flags avx512_bf16 or amx_bf16).

    Read from /proc/cpuinfo; True where that file has no x86 flags line (other systems
    and architectures are left to the library).
    """
    try:
        with open("/proc/cpuinfo", "r", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return True


def bf16_matmul_mode() -> str:
    """"native" or "fp32": how bf16 autocast runs matrix products on this CPU (see above)."""
    mode = FAST_PATHS.bf16_matmul
    if mode == "auto":
        return "native" if cpu_has_native_bf16() else "fp32"
    if mode not in BF16_MATMUL_MODES:
        raise ValueError(f"bf16_matmul must be one of {BF16_MATMUL_MODES}, got {mode!r}")
    return mode


def _bf16_via_fp32(x: torch.Tensor) -> bool:
    """True inside CPU bf16 autocast when bf16 GEMMs run as fp32 GEMMs (mode "fp32")."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and bf16_matmul_mode() == "fp32")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class _LinearBf16ViaFp32(torch.autograd.Function):
    """bf16(x·Wᵀ + b) with bf16-rounded x, W, b and an fp32 GEMM (fp32 accumulation).

    Saves the bf16 operands for backward; the gradients come from fp32 GEMMs.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        with torch.autocast("cpu", enabled=False):
            x16 = x.to(torch.bfloat16)
            w16 = weight.to(torch.bfloat16)
            x32 = x16.reshape(-1, x.shape[-1]).float()
            if bias is None:
                out = torch.mm(x32, w16.float().t())
            else:
                out = torch.addmm(bias.to(torch.bfloat16).float(), x32, w16.float().t())
            out = out.to(torch.bfloat16)
        ctx.save_for_backward(x16, w16)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output):
        x16, w16 = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_x = grad_w = grad_b = None
        with torch.autocast("cpu", enabled=False):
            grad = grad_output.reshape(-1, grad_output.shape[-1]).float()  # [B*T, out]
            if ctx.needs_input_grad[0]:
                grad_x = torch.mm(grad, w16.float()).view(x16.shape).to(x_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = torch.mm(grad.t(), x16.reshape(-1, x16.shape[-1]).float()).to(w_dtype)
            if b_dtype is not None and ctx.needs_input_grad[2]:
                grad_b = grad.sum(0).to(b_dtype)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear, with the bf16 fast path under CPU bf16 autocast (see ``bf16_matmul``)."""
    if _bf16_via_fp32(x):
        return _LinearBf16ViaFp32.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) using ``linear`` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


_DROPOUT_LEVELS = 1 << 16  # masks are drawn as 16-bit integers


def _uses_fast_dropout(x: torch.Tensor) -> bool:
    return FAST_PATHS.fast_dropout and x.device.type == "cpu" and not _compiling()


def _random_int16(count: int) -> torch.Tensor:
    """``count`` independent uniform int16 values (CPU).

    Made by numpy's SFC64 generator, seeded with one 64-bit draw of torch's default
    generator, so ``torch.manual_seed`` and saved torch RNG states reproduce them. SFC64
    makes random bits several times faster than torch's serial mt19937, and every 64-bit
    word gives four int16 values.
    """
    seed = int(torch.empty((), dtype=torch.int64).random_(-(1 << 63), None)) & ((1 << 64) - 1)
    words = np.random.SFC64(seed).random_raw((count + 3) // 4)  # uint64
    return torch.from_numpy(words.view(np.int16)[:count])


def _dropout_mask(x: torch.Tensor, p: float) -> Tuple[torch.Tensor, float]:
    """A 0/1 mask like ``x``, in its dtype (1 = keep), and the scale 1 / P(keep); 0 < p < 1.

    The mask is made by one comparison straight into ``x``'s dtype and applied by a
    multiplication: both several times faster than a bool mask with ``where`` (at 4
    bytes per element in fp32 instead of 1 for the mask kept for backward).
    """
    dropped_levels = min(max(round(p * _DROPOUT_LEVELS), 1), _DROPOUT_LEVELS - 1)
    draws = _random_int16(x.numel()).view(x.shape)
    mask = torch.empty(x.shape, dtype=x.dtype)
    torch.ge(draws, dropped_levels - _DROPOUT_LEVELS // 2, out=mask)  # P(1) = 1 - levels / 2^16
    return mask, _DROPOUT_LEVELS / (_DROPOUT_LEVELS - dropped_levels)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout; on CPU with cheap 16-bit random masks (see ``fast_dropout``)."""
    if not training or p == 0.0:
        return x
    if not _uses_fast_dropout(x):
        return F.dropout(x, p, True)
    mask, scale = _dropout_mask(x, p)
    if x.dtype == torch.float32:
        return x * mask.mul_(scale)  # the scale folded into the mask: one pass in backward
    return (x * mask).mul_(scale)  # (bf16/fp16 cannot hold the scale exactly)


class Dropout(nn.Dropout):
    """``nn.Dropout`` using ``dropout`` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              mask: Optional[torch.Tensor], dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(Q·Kᵀ/sqrt(d) + mask) · V, dropout on the probabilities: [B, n, T, d].

    ``mask`` is additive, broadcastable to [B, n, T, T] (here [B, 1, 1, T]), or None.
    Without dropout: SDPA (its fused CPU kernel, forward and backward). With dropout on
    the CPU: the explicit formula with ``dropout`` (SDPA would take its math fallback,
    which draws the mask with bernoulli_ and re-checks the mask for infinities).
    """
    if _bf16_via_fp32(query):
        with torch.autocast("cpu", enabled=False):
            context = attention(query.float(), key.float(), value.float(),
                                None if mask is None else mask.float(), dropout_p)
        return context.to(torch.bfloat16)
    if mask is not None and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)
    if dropout_p > 0.0 and _uses_fast_dropout(query):
        scores = torch.matmul(query * (1.0 / math.sqrt(query.size(-1))), key.transpose(-1, -2))  # [B, n, T, T]
        if mask is not None:
            scores.add_(mask)
        probs = torch.softmax(scores, dim=-1)
        keep, scale = _dropout_mask(probs, dropout_p)
        # (keep ⊙ probs · scale) · V, with the scale applied to the smaller [B, n, T, d].
        return torch.matmul(probs * keep, value).mul_(scale)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p)


def attention_mask_dtype(reference: torch.Tensor) -> torch.dtype:
    """The dtype the attention computes in for activations like ``reference``.

    Under autocast the products run in the autocast dtype (fp32 for the bf16 fast path),
    so the additive mask is built once in that dtype instead of cast in every layer.
    """
    device_type = reference.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        if dtype == torch.bfloat16 and _bf16_via_fp32(reference):
            return torch.float32
        return dtype
    return reference.dtype


def _in_place_allowed(x: torch.Tensor) -> bool:
    """Whether ``inference_in_place`` may overwrite activations derived from ``x``."""
    return (FAST_PATHS.inference_in_place and not torch.is_grad_enabled() and not _compiling()
            and not torch.is_autocast_enabled(x.device.type))


def residual_dense(dense: nn.Linear, x: torch.Tensor, residual: torch.Tensor, dropout: nn.Dropout) -> torch.Tensor:
    """dropout(dense(x)) + residual: x [B, T, in], residual [B, T, out] -> [B, T, out]."""
    dropout_is_identity = not dropout.training or dropout.p == 0.0
    if not (dropout_is_identity and _in_place_allowed(x) and dense.bias is not None
            and x.dtype == residual.dtype == dense.weight.dtype):
        return dropout(dense(x)) + residual
    out = torch.add(residual, dense.bias)  # [B, T, out]
    out.view(-1, out.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), dense.weight.t())  # += x·Wᵀ
    return out


def dense_gelu(dense: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """gelu(dense(x)), with GELU in place when nothing keeps the pre-activation."""
    hidden = dense(x)
    if _in_place_allowed(x):
        return torch.ops.aten.gelu_(hidden)
    return gelu(hidden)


def compile_model(model: nn.Module, **options) -> nn.Module:
    """``torch.compile(model, dynamic=True, **options)``: the same module, compiled.

    Optional: compilation takes a while (tens of seconds to minutes on a small CPU) and
    pays off for long runs. ``dynamic=True`` avoids a recompilation for every sequence
    length that dynamic padding produces. Dropout then uses inductor's fused random
    numbers. The returned module shares parameters and state-dict keys with ``model``
    (under an ``_orig_mod.`` prefix: save ``model``, not the compiled wrapper).
    """
    options.setdefault("dynamic", True)
    return torch.compile(model, **options)


# --------------------------------------------------------------------------------------
# Core BERT blocks
# --------------------------------------------------------------------------------------


class BERTLayerNorm(nn.Module):
    """TF-style LayerNorm (biased variance, eps inside the sqrt) with ``gamma``/``beta``.

    Width is hidden_size, or hidden_size_aug inside the projected attention blocks.
    """

    def __init__(self, config: BertConfig, multi_params=None, variance_epsilon: Optional[float] = None):
        super().__init__()
        width = config.hidden_size_aug if multi_params is not None else config.hidden_size
        self.gamma = nn.Parameter(torch.ones(width))
        self.beta = nn.Parameter(torch.zeros(width))
        self.variance_epsilon = config.layer_norm_eps if variance_epsilon is None else variance_epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.gamma.dtype and x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()  # autocast leaves LayerNorm in the input dtype: normalise in fp32
        return F.layer_norm(x, self.gamma.shape, self.gamma, self.beta, self.variance_epsilon)


class BERTEmbeddings(nn.Module):
    """Sum of word, position and token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = BERTLayerNorm(config)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        seq_length = input_ids.size(1)
        if seq_length > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {seq_length} exceeds max_position_embeddings "
                             f"({self.position_embeddings.num_embeddings})")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # Positions 0..T-1 are the first T rows; slicing avoids building position ids.
        positions = self.position_embeddings.weight[:seq_length]  # [T, H]
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings += positions  # [B, T, H]
        return self.dropout(self.LayerNorm(embeddings))


class BERTSelfAttention(nn.Module):
    """Multi-head self-attention without an output projection.

    With ``multi_params`` = n it works in the projected space: n heads over
    hidden_size_aug (PALs use n=6, the attention on top n=12).
    """

    def __init__(self, config: BertConfig, multi_params: Optional[int] = None):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ConfigError(f"hidden_size ({config.hidden_size}) is not divisible by "
                              f"num_attention_heads ({config.num_attention_heads})")
        if multi_params is not None:
            if config.hidden_size_aug % multi_params:
                raise ConfigError(f"hidden_size_aug ({config.hidden_size_aug}) is not divisible "
                                  f"by {multi_params} heads")
            self.num_attention_heads = multi_params
            width = config.hidden_size_aug
        else:
            self.num_attention_heads = config.num_attention_heads
            width = config.hidden_size
        self.attention_head_size = width // self.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = Linear(width, self.all_head_size)
        self.key = Linear(width, self.all_head_size)
        self.value = Linear(width, self.all_head_size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self._fused_cache = None  # (parameter stamps, weight, bias) of the fused Q/K/V GEMM

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_length, _ = x.shape
        x = x.view(batch, seq_length, self.num_attention_heads, self.attention_head_size)
        return x.transpose(1, 2)  # [B, n, T, d]

    def _fused_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The [3·n·d, width] weight and [3·n·d] bias of the fused Q/K/V GEMM.

        Concatenated at every call while gradients are recorded (training); without
        gradients (inference) reused for as long as the parameters are unchanged (same
        storage, same version counter), so batches do not copy the weights again.
        """
        parts = (self.query.weight, self.key.weight, self.value.weight,
                 self.query.bias, self.key.bias, self.value.bias)
        if torch.is_grad_enabled() or _compiling():
            self._fused_cache = None
            return torch.cat(parts[:3]), torch.cat(parts[3:])
        stamp = tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in parts)
        if self._fused_cache is None or self._fused_cache[0] != stamp:
            self._fused_cache = (stamp, torch.cat(parts[:3]), torch.cat(parts[3:]))
        return self._fused_cache[1], self._fused_cache[2]

    def _query_key_value(self, hidden_states: torch.Tensor):
        """Q, K, V as [B, n, T, d] views; one fused GEMM unless ``fused_qkv`` is off."""
        if not FAST_PATHS.fused_qkv:
            return (self._split_heads(self.query(hidden_states)), self._split_heads(self.key(hidden_states)),
                    self._split_heads(self.value(hidden_states)))
        weight, bias = self._fused_weights()
        mixed = linear(hidden_states, weight, bias)  # [B, T, 3·n·d]
        batch, seq_length, _ = mixed.shape
        mixed = mixed.view(batch, seq_length, 3, self.num_attention_heads, self.attention_head_size)
        return mixed.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, n, T, d], no copies

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """hidden_states [B, T, width], attention_mask additive [B, 1, 1, T] or None -> [B, T, n*d]."""
        query, key, value = self._query_key_value(hidden_states)  # [B, n, T, d] each
        dropout_p = self.dropout.p if self.training else 0.0
        # softmax(Q·Kᵀ/sqrt(d) + mask) with dropout on the probabilities, then ·V.
        context = attention(query, key, value, attention_mask, dropout_p)  # [B, n, T, d]
        batch, _, seq_length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, seq_length, self.all_head_size)  # [B, T, n*d]


class BERTLowRank(nn.Module):
    """Low-rank adapter W_D · gelu(W_E · h); width extra_dim if set, else hidden_size_aug."""

    def __init__(self, config: BertConfig, extra_dim=None):
        super().__init__()
        width = config.low_rank_width  # the original ignores the extra_dim argument too
        self.aug_dense = Linear(config.hidden_size, width)
        self.aug_dense2 = Linear(width, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, attention_mask=None) -> torch.Tensor:
        return self.aug_dense2(gelu(self.aug_dense(hidden_states)))  # [B, T, H]


class BERTPals(nn.Module):
    """Projected attention layer: gelu(V_D · MHA_6(V_E · h)).

    The GELU acts on the H-wide output; there is no nonlinearity between V_E and the
    attention, and the attention has no output matrix (as in the original).
    """

    def __init__(self, config: BertConfig, extra_dim=None):
        super().__init__()
        self.aug_dense = Linear(config.hidden_size, config.hidden_size_aug)  # V_E
        self.attn = BERTSelfAttention(config, PAL_HEADS)
        self.aug_dense2 = Linear(config.hidden_size_aug, config.hidden_size)  # V_D

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        projected = self.aug_dense(hidden_states)  # [B, T, A]
        attended = self.attn(projected, attention_mask)  # [B, T, A]
        return gelu(self.aug_dense2(attended))  # [B, T, H]


class BERTLhuc(nn.Module):
    """LHUC: element-wise scaling by 2·sigmoid(r), r initialised to 0 (identity)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.lhuc = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * (2.0 * torch.sigmoid(self.lhuc))


def _task_adapters(config: BertConfig, use_pals: bool) -> nn.ModuleList:
    """One adapter per task: PALs or low-rank."""
    adapter = BERTPals if use_pals else BERTLowRank
    return nn.ModuleList(adapter(config) for _ in range(config.num_tasks))


class BERTSelfOutput(nn.Module):
    """Attention output projection, dropout, (Houlsby adapter), residual and LayerNorm."""

    def __init__(self, config: BertConfig, multi_params=None, houlsby: bool = False):
        super().__init__()
        width = config.hidden_size_aug if multi_params is not None else config.hidden_size
        self.dense = Linear(width, width)
        self.LayerNorm = BERTLayerNorm(config, multi_params)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.houlsby = houlsby
        if houlsby:
            # The attention-position adapter is always low-rank (width extra_dim if set).
            self.multi_layers = _task_adapters(config, use_pals=False)

    def forward(self, hidden_states, input_tensor, attention_mask=None, i: int = 0) -> torch.Tensor:
        if not self.houlsby:
            return self.LayerNorm(residual_dense(self.dense, hidden_states, input_tensor, self.dropout))
        hidden_states = self.dropout(self.dense(hidden_states))
        hidden_states = hidden_states + self.multi_layers[i](hidden_states, attention_mask)
        return self.LayerNorm(hidden_states + input_tensor)


class BERTAttention(nn.Module):
    """Self-attention sublayer: attention, output projection, residual, LayerNorm."""

    def __init__(self, config: BertConfig, multi_params=None, houlsby: bool = False):
        super().__init__()
        self.self = BERTSelfAttention(config, multi_params)
        self.output = BERTSelfOutput(config, multi_params, houlsby)

    def forward(self, input_tensor, attention_mask, i: int = 0) -> torch.Tensor:
        context = self.self(input_tensor, attention_mask)
        return self.output(context, input_tensor, attention_mask, i=i)


class BERTIntermediate(nn.Module):
    """First FFN matrix and GELU: H -> intermediate_size."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return dense_gelu(self.dense, hidden_states)


class BERTOutput(nn.Module):
    """Second FFN matrix, dropout, (Houlsby adapter), residual and LayerNorm.

    The FFN-position adapter reads ``input_tensor`` (the FFN sublayer's input), not
    the FFN output: the original's "approximate" Houlsby wiring.
    """

    def __init__(self, config: BertConfig, houlsby: bool = False):
        super().__init__()
        self.dense = Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = BERTLayerNorm(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.houlsby = houlsby
        if houlsby:
            self.multi_layers = _task_adapters(config, use_pals=config.pals)

    def forward(self, hidden_states, input_tensor, attention_mask=None, i: int = 0) -> torch.Tensor:
        if not self.houlsby:
            return self.LayerNorm(residual_dense(self.dense, hidden_states, input_tensor, self.dropout))
        hidden_states = self.dropout(self.dense(hidden_states))
        hidden_states = hidden_states + self.multi_layers[i](input_tensor, attention_mask)
        return self.LayerNorm(hidden_states + input_tensor)


class BERTLayer(nn.Module):
    """One transformer layer, with the adapters the config asks for.

    mult:    out = LN(FFN(a) + a + adapter_i(h))       adapter beside the whole layer
    houlsby: adapters inside both sublayers
    lhuc:    scales the adapter output (with mult), else the layer output
    """

    def __init__(self, config: BertConfig, mult: bool = False, houlsby: bool = False):
        super().__init__()
        self.attention = BERTAttention(config, houlsby=houlsby)
        self.intermediate = BERTIntermediate(config)
        self.output = BERTOutput(config, houlsby=houlsby)
        self.lhuc = config.lhuc
        self.mult = mult
        self.houlsby = houlsby
        if config.lhuc:
            self.multi_lhuc = nn.ModuleList(BERTLhuc(config) for _ in range(config.num_tasks))
        if mult:
            self.multi_layers = _task_adapters(config, use_pals=config.pals)

    def forward(self, hidden_states, attention_mask, i: int = 0) -> torch.Tensor:
        attention_output = self.attention(hidden_states, attention_mask, i)  # [B, T, H]
        intermediate_output = self.intermediate(attention_output)  # [B, T, I]
        if self.mult:
            extra = self.multi_layers[i](hidden_states, attention_mask)  # reads the layer input
            if self.lhuc:
                extra = self.multi_lhuc[i](extra)
            return self.output(intermediate_output, attention_output + extra)
        # Houlsby adapters get the task index and mask; with LHUC too, the original took
        # an LHUC branch first that dropped both (task 0's adapter for every task).
        layer_output = self.output(intermediate_output, attention_output, attention_mask, i)
        if self.lhuc:
            layer_output = self.multi_lhuc[i](layer_output)
        return layer_output


class BERTEncoder(nn.Module):
    """The stack of layers, the tied PAL projections and the per-task modules on top."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList(
            BERTLayer(config, mult=config.mult, houlsby=config.houlsby)
            for _ in range(config.num_hidden_layers)
        )
        if config.top:
            self._build_top(config)
        if config.uses_shared_pals:
            self._tie_pal_projections(config)

    def _build_top(self, config: BertConfig) -> None:
        tasks = range(config.num_tasks)
        if config.bert_lay_top:
            self.multi_layers = nn.ModuleList(BERTLayer(config) for _ in tasks)
            return
        self.mult_dense = nn.ModuleList(
            Linear(config.hidden_size, config.hidden_size_aug) for _ in tasks)
        self.mult_dense2 = nn.ModuleList(
            Linear(config.hidden_size_aug, config.hidden_size) for _ in tasks)
        self.multi_layers = nn.ModuleList(
            nn.ModuleList(BERTAttention(config, TOP_ATTENTION_HEADS) for _ in range(TOP_ATTENTION_BLOCKS))
            for _ in tasks)

    def _tie_pal_projections(self, config: BertConfig) -> None:
        """One V_E and one V_D per task, registered in every layer's PAL (as the original).

        The state dict lists each tied tensor once per layer plus once under
        ``mult_aug_dense``; ``parameters()`` yields it once.
        """
        tasks = range(config.num_tasks)
        self.mult_aug_dense = nn.ModuleList(
            Linear(config.hidden_size, config.hidden_size_aug) for _ in tasks)
        self.mult_aug_dense2 = nn.ModuleList(
            Linear(config.hidden_size_aug, config.hidden_size) for _ in tasks)
        for layer in self.layer:
            pals = layer.output.multi_layers if config.houlsby else layer.multi_layers
            for task, pal in enumerate(pals):
                pal.aug_dense = self.mult_aug_dense[task]
                pal.aug_dense2 = self.mult_aug_dense2[task]

    def forward(self, hidden_states, attention_mask, i: int = 0) -> List[torch.Tensor]:
        all_encoder_layers = []
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask, i)
            all_encoder_layers.append(hidden_states)
        if self.config.top:
            # The task's module on top replaces the last output (no residual to it).
            all_encoder_layers[-1] = self._run_top(hidden_states, attention_mask, i)
        return all_encoder_layers

    def _run_top(self, hidden_states, attention_mask, i: int) -> torch.Tensor:
        if self.config.bert_lay_top:
            return self.multi_layers[i](hidden_states, attention_mask, i)
        projected = self.mult_dense[i](hidden_states)  # [B, T, A]
        for block in self.multi_layers[i]:
            projected = block(projected, attention_mask)  # [B, T, A]
        return self.mult_dense2[i](projected)  # [B, T, H]


class BERTPooler(nn.Module):
    """tanh(W · h_[CLS]): one shared dense layer on the first token."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor, i: int = 0) -> torch.Tensor:
        first_token = hidden_states[:, 0]  # [B, H]
        return self.activation(self.dense(first_token))


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] of 1 (token) / 0 (padding) -> additive [B, 1, 1, T] of 0 / -10000."""
    mask = attention_mask[:, None, None, :].to(dtype)  # [B, 1, 1, T]
    return (1.0 - mask) * MASK_VALUE


class BertModel(nn.Module):
    """BERT: embeddings, encoder (with adapters) and pooler.

    forward(input_ids [B, T], token_type_ids [B, T] or None, attention_mask [B, T] or
    None, i = task index) returns (all_encoder_layers, pooled_output): a list of
    num_hidden_layers tensors [B, T, H] (embeddings not included) and [B, H].
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = BERTEmbeddings(config)
        self.encoder = BERTEncoder(config)
        self.pooler = BERTPooler(config)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, i: int = 0):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embedding_output = self.embeddings(input_ids, token_type_ids)  # [B, T, H]
        # Built once here, in the dtype the attention computes in, and reused by every
        # layer and adapter. A batch without padding needs no mask (adding 0 changes nothing).
        if not _compiling() and bool(attention_mask.bool().all()):
            mask = None
        else:
            mask = extended_attention_mask(attention_mask, attention_mask_dtype(embedding_output))  # [B, 1, 1, T]
        all_encoder_layers = self.encoder(embedding_output, mask, i)
        pooled_output = self.pooler(all_encoder_layers[-1], i)
        return all_encoder_layers, pooled_output


# --------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------


def init_bert_weights(module: nn.Module, initializer_range: float) -> None:
    """The original initialisation, applied to every submodule.

    Linear and Embedding weights ~ N(0, initializer_range); Linear biases 0; LayerNorm
    gamma AND beta ~ N(0, initializer_range) (an upstream quirk of 2018: modules that
    no checkpoint overwrites, such as the attention blocks on top, start near zero).
    LHUC vectors keep their zeros.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=initializer_range)
    elif isinstance(module, BERTLayerNorm):
        module.beta.data.normal_(mean=0.0, std=initializer_range)
        module.gamma.data.normal_(mean=0.0, std=initializer_range)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()


class _BertHead(nn.Module):
    """Shared plumbing of the heads: a ``bert`` trunk and the original initialisation."""

    def __init__(self, config: BertConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.bert = BertModel(config)

    def init_weights(self) -> None:
        self.apply(lambda module: init_bert_weights(module, self.config.initializer_range))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Mean cross-entropy, or mean squared error for a one-output (regression) head."""
    if num_labels == 1:
        return F.mse_loss(logits.float(), labels.float().view(-1, 1))
    return F.cross_entropy(logits.float(), labels.view(-1))


class BertForMultiTask(_BertHead):
    """Shared BERT (with adapters) and one linear classifier per task.

    ``tasks`` lists the number of labels of each task; a task with one label is a
    regression task (mean squared error on one output).
    forward(...) returns logits [B, n_labels], or (loss, logits) when labels are given.
    """

    def __init__(self, config: BertConfig, tasks: Sequence[int]):
        super().__init__(config)
        tasks = [int(n) for n in tasks]
        if len(tasks) != config.num_tasks:
            raise ConfigError(f"{len(tasks)} task heads given but config.num_tasks is "
                              f"{config.num_tasks}; set num_tasks to the number of tasks")
        if any(n < 1 for n in tasks):
            raise ConfigError(f"every task needs at least one label, got {tasks}")
        self.num_labels = tasks
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.ModuleList(Linear(config.hidden_size, n) for n in tasks)
        self.init_weights()

    def forward(self, input_ids, token_type_ids, attention_mask, task_id, name: str = "cola", labels=None):
        _, pooled_output = self.bert(input_ids, token_type_ids, attention_mask, task_id)
        logits = self.classifier[task_id](self.dropout(pooled_output))  # [B, n_labels]
        if labels is None:
            return logits
        return classification_loss(logits, labels, self.num_labels[task_id]), logits


class BertForSequenceClassification(_BertHead):
    """Single-task classifier on the pooled output (task index 0)."""

    def __init__(self, config: BertConfig, num_labels: int):
        super().__init__(config)
        self.num_labels = num_labels
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, num_labels)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None):
        _, pooled_output = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.classifier(self.dropout(pooled_output))  # [B, num_labels]
        if labels is None:
            return logits
        return classification_loss(logits, labels, self.num_labels), logits


class BertForQuestionAnswering(_BertHead):
    """Start and end logits for every token of the last layer (SQuAD-style spans).

    Returns the mean of the start and end cross-entropies when positions are given
    (positions outside [0, T) are ignored), else (start_logits, end_logits), each [B, T].
    """

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.qa_outputs = Linear(config.hidden_size, 2)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                start_positions=None, end_positions=None):
        all_encoder_layers, _ = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.qa_outputs(all_encoder_layers[-1])  # [B, T, 2]
        start_logits, end_logits = logits.unbind(dim=-1)  # [B, T] each
        if start_positions is None or end_positions is None:
            return start_logits, end_logits
        ignored_index = start_logits.size(1)
        start_positions = start_positions.view(-1).clamp(0, ignored_index)
        end_positions = end_positions.view(-1).clamp(0, ignored_index)
        start_loss = F.cross_entropy(start_logits.float(), start_positions, ignore_index=ignored_index)
        end_loss = F.cross_entropy(end_logits.float(), end_positions, ignore_index=ignored_index)
        return (start_loss + end_loss) / 2


class BertForMultipleChoice(_BertHead):
    """Scores each of C choices from its pooled output; inputs are [B, C, T].

    Returns the cross-entropy over choices when labels are given, else logits [B, C].
    """

    def __init__(self, config: BertConfig, num_choices: int = 2):
        super().__init__(config)
        self.num_choices = num_choices
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = Linear(config.hidden_size, 1)
        self.init_weights()

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None):
        seq_length = input_ids.size(-1)
        flat_ids = input_ids.reshape(-1, seq_length)  # [B*C, T]
        flat_types = token_type_ids.reshape(-1, seq_length) if token_type_ids is not None else None
        flat_mask = attention_mask.reshape(-1, seq_length) if attention_mask is not None else None
        _, pooled_output = self.bert(flat_ids, flat_types, flat_mask)  # [B*C, H]
        logits = self.classifier(self.dropout(pooled_output))  # [B*C, 1]
        reshaped_logits = logits.view(-1, self.num_choices)  # [B, C]
        if labels is None:
            return reshaped_logits
        return F.cross_entropy(reshaped_logits.float(), labels.view(-1))


# README spellings of the adapter classes.
BertPals = BERTPals
BertLowRank = BERTLowRank
BertLHUC = BERTLhuc
BertLayer = BERTLayer
BertEncoder = BERTEncoder
BertPooler = BERTPooler
BertLayerNorm = BERTLayerNorm
BertEmbeddings = BERTEmbeddings


# --------------------------------------------------------------------------------------
# Loading pretrained weights
# --------------------------------------------------------------------------------------

WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin")
_BERT_SUBMODULES = ("embeddings.", "encoder.", "pooler.")
# Buffers of Hugging Face checkpoints that are not weights.
_IGNORABLE_KEYS = ("embeddings.position_ids",)


@dataclass
class LoadReport:
    """What a load did: tensors loaded, task-specific ones left at init, ignored extras."""

    source: str
    loaded: List[str] = field(default_factory=list)
    kept_init: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)

    def summary(self) -> str:
        line = f"loaded {len(self.loaded)} tensors from {self.source}"
        if self.kept_init:
            line += (f"; {len(self.kept_init)} task-specific tensors not in the checkpoint keep "
                     f"their initialisation ({_group_names(self.kept_init)})")
        if self.ignored:
            line += f"; ignored {len(self.ignored)} checkpoint tensors ({_group_names(self.ignored)})"
        return line


def _group_names(keys: Sequence[str], limit: int = 4) -> str:
    """A short description of many keys: their distinct leading parts."""
    groups = []
    for key in keys:
        parts = key.split(".")
        head = ".".join(p for p in parts[:3] if not p.isdigit())
        if head not in groups:
            groups.append(head)
    shown = ", ".join(groups[:limit])
    return shown + (", ..." if len(groups) > limit else "")


def resolve_weights_file(path: Union[str, os.PathLike]) -> str:
    """A weights file, or a Hugging Face-style folder holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in WEIGHT_FILE_NAMES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise CheckpointError(f"{path}: folder holds none of {', '.join(WEIGHT_FILE_NAMES)}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a torch file, without executing code.

    ``torch.load`` runs with ``weights_only=True``: a pickle that would run code is
    refused. A training checkpoint ``{"model": state_dict, ...}`` yields its model part.
    """
    weights_file = resolve_weights_file(path)
    if weights_file.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(weights_file, device="cpu")
        except Exception as err:  # safetensors raises its own error type for bad headers
            raise CheckpointError(f"{weights_file}: not a readable safetensors file ({err})") from None
    try:
        loaded = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        from checkpointing import explain_torch_load_error  # (checkpointing imports this module)
        reason = explain_torch_load_error(err)
        raise CheckpointError(f"{weights_file}: refused or unreadable checkpoint (only plain tensors "
                              f"are loaded, never code): {reason}") from None
    return _extract_tensors(loaded, weights_file)


def _extract_tensors(loaded: Any, source: str) -> Dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"{source}: holds no state dict of tensors")
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry '{key}' is not a tensor")
    return dict(loaded)


def normalize_checkpoint_keys(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map any supported key layout onto this model's names.

    Handles the ``module.`` prefix of DataParallel checkpoints and Hugging Face's
    ``LayerNorm.weight``/``LayerNorm.bias`` names. A ``bert.`` prefix is kept (heads
    live outside ``bert``); see ``_align_bert_prefix``.
    """
    normalized = {}
    for key, tensor in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if ".LayerNorm." in key or key.startswith("LayerNorm."):
            key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        normalized[key] = tensor
    return normalized


def _align_bert_prefix(state_dict: Dict[str, torch.Tensor], model_has_bert_prefix: bool) -> Dict[str, torch.Tensor]:
    """Give BERT keys the prefix the target model uses (``bert.`` for heads, none for BertModel)."""
    aligned = {}
    for key, tensor in state_dict.items():
        bare = key[len("bert."):] if key.startswith("bert.") else key
        is_bert_key = bare.startswith(_BERT_SUBMODULES)
        if is_bert_key:
            key = "bert." + bare if model_has_bert_prefix else bare
        aligned[key] = tensor
    return aligned


def is_task_specific(key: str) -> bool:
    """Adapters, LHUC, modules on top and heads: parameters a BERT checkpoint lacks."""
    bare = key[len("bert."):] if key.startswith("bert.") else key
    if not bare.startswith(_BERT_SUBMODULES):
        return True  # classifier, qa_outputs ...
    return any(marker in bare for marker in TASK_SPECIFIC_MARKERS)


_TASK_INDEX = re.compile(r"(?:multi_layers|multi_lhuc|mult_aug_dense2?|mult_dense2?|classifier)\.(\d+)")


def task_of_key(key: str) -> Optional[int]:
    """The task a state-dict key belongs to, or None for shared BERT weights.

    Every task-specific module sits in a per-task ModuleList (``multi_layers``,
    ``multi_lhuc``, ``mult_aug_dense(2)``, ``mult_dense(2)``, ``classifier``); the
    index right after that name is the task.
    """
    match = _TASK_INDEX.search(key)
    return int(match.group(1)) if match else None


def load_pretrained_weights(model: nn.Module, path: Union[str, os.PathLike],
                            log: Optional[logging.Logger] = None) -> LoadReport:
    """Load a pretrained checkpoint into ``BertModel`` or any head model.

    Accepts the original converted format (``gamma``/``beta``), a Hugging Face folder
    (``model.safetensors`` or ``pytorch_model.bin``) or file, with or without ``bert.``
    or ``module.``, and full multi-task checkpoints of this project.

    Every BERT weight must be present with the right shape (else CheckpointError naming
    the key). Task-specific tensors the checkpoint lacks keep their initialisation;
    checkpoint tensors the model has no place for are ignored when they are pre-training
    or head tensors, and refused otherwise. The summary goes to the log as one line.
    """
    source = os.fspath(path)
    checkpoint = normalize_checkpoint_keys(read_state_dict(path))
    model_keys = model.state_dict()
    has_prefix = any(k.startswith("bert.") for k in model_keys)
    checkpoint = _align_bert_prefix(checkpoint, has_prefix)
    report = LoadReport(source=source)
    to_load = {}
    for key, target in model_keys.items():
        if key not in checkpoint:
            if not is_task_specific(key):
                raise CheckpointError(f"{source}: missing BERT weight '{key}'")
            report.kept_init.append(key)
            continue
        tensor = checkpoint[key]
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f"{source}: '{key}' has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(target.shape)}")
        to_load[key] = tensor
        report.loaded.append(key)
    for key in checkpoint:
        if key in model_keys:
            continue
        bare = key[len("bert."):] if key.startswith("bert.") else key
        # Pre-training heads, other heads and adapters of another config have no place
        # here; an unknown BERT weight means the config does not match the checkpoint.
        if bare in _IGNORABLE_KEYS or is_task_specific(key):
            report.ignored.append(key)
        else:
            raise CheckpointError(f"{source}: unexpected tensor '{key}' (the model has no such "
                                  f"weight; does the config match the checkpoint?)")
    model.load_state_dict(to_load, strict=False)
    (log or logger).info(report.summary())
    return report


def load_config_for_checkpoint(path: Union[str, os.PathLike]) -> Optional[BertConfig]:
    """The ``config.json`` beside (or inside) a checkpoint, if there is one."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    candidate = os.path.join(folder, "config.json")
    return BertConfig.from_json_file(candidate) if os.path.isfile(candidate) else None


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied tensors counted once), as the original logged."""
    return sum(p.numel() for p in model.parameters())
