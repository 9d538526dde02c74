"""Speed kernels of the model, chosen once when the model is built.

A leaf module (torch, NumPy and the standard library only). ``Kernels`` says which
kernels a model uses; the model constructors take it (``BertModel(config,
kernels=Kernels.plain())``, default ``Kernels()``), and ``set_kernels`` changes it on
a built model. Nothing here reads the environment or keeps global settings.

Kept because it pays on the CPU (benchmarks/README.md, "Fast paths kept", has the
measured figures, the command that gives them, and the fast paths dropped for lack of
a gain):

    fast_dropout   CPU dropout masks from 16-bit random integers (four per 64-bit word
                   of NumPy's SFC64 generator, seeded from torch's generator, so
                   ``torch.manual_seed`` and saved RNG states reproduce them) instead of
                   ``bernoulli_``, and attention dropout written out instead of SDPA's
                   math fallback. It ROUNDS DIFFERENTLY from torch's dropout: the drop
                   probability is p rounded to a multiple of 2^-16 (0.1 -> 0.100006),
                   and kept values are scaled by exactly 1 / (1 - that probability).
                   Only in training mode: in eval mode dropout is the identity, so a
                   model computes the same with either choice. Tensors on other devices
                   always use torch's dropout.

``Kernels.plain()`` switches it off: torch's own dropout everywhere. Nothing depends on
grad mode or autocast. ``compile_model`` wraps a model in ``torch.compile`` (optional).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Kernels:
    """Which fast kernels a model uses (see the module docstring); frozen."""

    fast_dropout: bool = True

    @classmethod
    def plain(cls) -> Kernels:
        """Every fast kernel off: torch's dropout."""
        return cls(fast_dropout=False)


def set_kernels(model: nn.Module, kernels: Kernels) -> nn.Module:
    """Give ``kernels`` to every submodule of ``model`` that has a ``kernels`` attribute.

    The model constructors call this once every module exists; call it again to switch
    a built model (parameters and state-dict keys do not change). Returns ``model``.
    """
    if not isinstance(kernels, Kernels):
        raise TypeError(f"kernels must be a Kernels, got {type(kernels).__name__}")
    for module in model.modules():
        if isinstance(getattr(module, "kernels", None), Kernels):
            module.kernels = kernels
    return model


# --------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------

_DROPOUT_LEVELS = 1 << 16  # masks are drawn as 16-bit integers


def random_int16(count: int) -> torch.Tensor:
    """``count`` independent uniform int16 values (CPU).

    Made by NumPy's SFC64 generator, seeded with one 64-bit draw of torch's default
    generator, so ``torch.manual_seed`` and saved torch RNG states reproduce them. SFC64
    makes random bits several times faster than torch's serial mt19937, and every 64-bit
    word gives four int16 values.
    """
    seed = int(torch.empty((), dtype=torch.int64).random_(-(1 << 63), None)) & ((1 << 64) - 1)
    words = np.random.SFC64(seed).random_raw((count + 3) // 4)  # uint64
    return torch.from_numpy(words.view(np.int16)[:count])


def dropout_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """A 0/1 mask like ``x``, in its dtype (1 = keep), and the scale 1 / P(keep); 0 < p < 1.

    P(drop) is p rounded to a multiple of 2^-16 (at least 2^-16, at most 1 - 2^-16).
    The mask is made by one comparison straight into ``x``'s dtype and applied by a
    multiplication: both several times faster than a bool mask with ``where``.
    """
    dropped_levels = min(max(round(p * _DROPOUT_LEVELS), 1), _DROPOUT_LEVELS - 1)
    draws = random_int16(x.numel()).view(x.shape)
    mask = torch.empty(x.shape, dtype=x.dtype)
    torch.ge(draws, dropped_levels - _DROPOUT_LEVELS // 2, out=mask)  # P(1) = 1 - levels / 2^16
    return mask, _DROPOUT_LEVELS / (_DROPOUT_LEVELS - dropped_levels)


def dropout(x: torch.Tensor, p: float, training: bool = True, *, fast: bool = True) -> torch.Tensor:
    """Inverted dropout; ``fast`` on a CPU tensor: the 16-bit masks above, else F.dropout."""
    if not training or p == 0.0:
        return x
    if not (fast and x.device.type == "cpu"):
        return F.dropout(x, p, True)
    mask, scale = dropout_mask(x, p)
    if x.dtype == torch.float32:
        return x * mask.mul_(scale)  # the scale folded into the mask: one pass in backward
    return (x * mask).mul_(scale)  # (bf16/fp16 cannot hold the scale exactly)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (no parameters, same state dict) using ``dropout`` above."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__(p, inplace)
        self.kernels = Kernels()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, fast=self.kernels.fast_dropout)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fast={self.kernels.fast_dropout}"


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------

def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
              dropout_p: float = 0.0, *, fast_dropout: bool = True) -> torch.Tensor:
    """softmax(Q·Kᵀ/sqrt(d) + mask) · V with dropout on the probabilities: [B, n, T, d].

    ``mask`` is additive, broadcastable to [B, n, T, T] (here [B, 1, 1, T]), or None.
    Without dropout: SDPA (its fused CPU kernel, forward and backward). With dropout,
    ``fast_dropout`` and CPU tensors: the formula written out with ``dropout_mask``
    (SDPA would take its math fallback, which draws the mask with ``bernoulli_``).
    """
    if mask is not None and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)
    if dropout_p > 0.0 and fast_dropout and query.device.type == "cpu":
        scores = torch.matmul(query * (1.0 / math.sqrt(query.size(-1))), key.transpose(-1, -2))  # [B, n, T, T]
        if mask is not None:
            scores.add_(mask)
        probs = torch.softmax(scores, dim=-1)  # [B, n, T, T]
        keep, scale = dropout_mask(probs, dropout_p)
        # (keep ⊙ probs · scale) · V, with the scale applied to the smaller [B, n, T, d].
        return torch.matmul(probs * keep, value).mul_(scale)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout_p)


# --------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------

def compile_model(model: nn.Module, **options) -> nn.Module:
    """``torch.compile(model, dynamic=True, **options)``: the same module, compiled.

    Optional: compilation takes a while (tens of seconds to minutes on a small CPU).
    ``dynamic=True`` avoids a recompilation for every sequence length that dynamic
    padding produces. NumPy-drawn dropout masks cannot be traced, so the model is first
    switched to torch's dropout (``fast_dropout=False``; inductor fuses its own random
    numbers). That switch applies to ``model`` itself, whose modules the compiled
    wrapper shares: eager and compiled calls compute alike. Save ``model``, not the
    wrapper (its state-dict keys carry an ``_orig_mod.`` prefix).
    """
    for module in model.modules():
        current = getattr(module, "kernels", None)
        if isinstance(current, Kernels):
            module.kernels = dataclasses.replace(current, fast_dropout=False)
    options.setdefault("dynamic", True)
    return torch.compile(model, **options)
