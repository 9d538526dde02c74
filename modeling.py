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

The adapter beside each layer (mult) or in the Houlsby FFN position comes from the
registry ``ADAPTERS`` ("pals", "low_rank"; ``register_adapter`` adds more); the config
key ``adapter`` names one, and without it the ``pals`` flag chooses, as in the original.

The task index ``i`` (``task_id`` in the heads) is an int, one task for the whole batch
as in the original, or a LongTensor [B] of per-row task ids for a batch that mixes
tasks: the shared layers then run once over all rows and each task-specific part runs
on its own rows (``per_task``, the one place that dispatches rows to tasks).

Layout of this file: configuration; BERT blocks; adapters and their registry; one task
or one per row; layer and encoder; BertModel; heads; which state-dict keys are
task-specific. The speed kernels (dropout masks and the attention with dropout) live in
kernels.py and are chosen when a model is built: ``BertModel(config, kernels=Kernels.plain())``.

Shape legend used in comments:
    B  batch size            T  sequence length
    H  hidden_size           A  hidden_size_aug (the adapters' projected width)
    I  intermediate_size     n  attention heads
    d  head size (H / n, or A / n inside adapters)

Module and parameter names (``gamma``/``beta``, ``multi_layers``, ``mult_aug_dense`` ...)
match the original code, so state dicts move between the two with a strict load.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import math
import operator
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from errors import ConfigError, UsageError
from kernels import Dropout, Kernels, attention, set_kernels

logger = logging.getLogger(__name__)

PAL_HEADS = 6  # heads inside a PAL; hard-coded in the original
TOP_ATTENTION_HEADS = 12  # heads inside each projected attention block on top
TOP_ATTENTION_BLOCKS = 6  # projected attention blocks per task on top
MASK_VALUE = -10000.0  # additive attention mask for padding, as in the original

# Every task-specific parameter name contains one of these substrings (the original's
# loader and freezing logic rely on 'aug' and 'mult'; LHUC lives under 'multi_lhuc').
TASK_SPECIFIC_MARKERS = ("aug", "mult")


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


# The config flags that choose the architecture (see the module docstring).
ARCHITECTURE_FLAGS = ("pals", "mult", "top", "lhuc", "houlsby", "bert_lay_top")


@dataclass
class BertConfig:
    """Configuration of BertModel and its adapters; every key of the original.

    ``vocab_size`` is the only required value. ``hidden_act`` is stored but the model
    always uses the erf GELU, as the original did (only "gelu" is accepted).
    """

    vocab_size: int | None
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
    extra_dim: int | None = None  # width of low-rank adapters, if set
    hidden_size_aug: int = 204  # projected width of PALs / low-rank / top attention
    layer_norm_eps: float = 1e-12
    # The adapter (a name in ADAPTERS) beside each layer (mult) or in the Houlsby FFN
    # position; None: the original's choice, "pals" if pals else "low_rank".
    adapter: str | None = None
    # Keys read from a JSON file that are not fields above, kept for a faithful round trip.
    extra_keys: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.validate()

    # ---- construction ---------------------------------------------------------------

    @classmethod
    def from_dict(cls, json_object: Mapping[str, Any]) -> BertConfig:
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
    def from_json_file(cls, json_file: str | os.PathLike) -> BertConfig:
        """Read a config file; errors name the file."""
        try:
            with open(json_file, encoding="utf-8") as reader:
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

    def to_dict(self) -> dict[str, Any]:
        """Every key, for a config.json; ``adapter`` only when set (so an original config
        writes exactly its original keys)."""
        output = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if output["adapter"] is None:
            del output["adapter"]
        extra = output.pop("extra_keys")
        output.update(extra)
        return output

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def replace(self, **changes) -> BertConfig:
        """A validated copy with some fields changed (e.g. ``num_tasks``)."""
        return dataclasses.replace(self, **changes)

    # ---- derived facts --------------------------------------------------------------

    @property
    def adapter_name(self) -> str:
        """The registered adapter beside each layer (mult) or in the Houlsby FFN position."""
        if self.adapter is not None:
            return self.adapter
        return "pals" if self.pals else "low_rank"

    @property
    def uses_shared_pals(self) -> bool:
        """PALs whose V_E/V_D are tied across layers (beside layers or in FFN position)."""
        return self.adapter_name == "pals" and (self.mult or self.houlsby)

    @property
    def uses_top_attention(self) -> bool:
        return self.top and not self.bert_lay_top

    @property
    def has_task_modules(self) -> bool:
        """Whether any task-specific module sits in the encoder (beyond the heads)."""
        return self.mult or self.houlsby or self.top or self.lhuc

    def without_adapters(self) -> BertConfig:
        """The same BERT with no task-specific module: what a pretrained checkpoint holds."""
        return self.replace(**{flag: False for flag in ARCHITECTURE_FLAGS}, adapter=None)

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
        for name in ARCHITECTURE_FLAGS:
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
        self._validate_adapter_name()
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

    def _validate_adapter_name(self) -> None:
        if self.adapter is None:
            return
        if not isinstance(self.adapter, str) or self.adapter not in ADAPTERS:
            raise ConfigError(f"'adapter' must be a registered adapter ({', '.join(sorted(ADAPTERS))}), "
                              f"got {self.adapter!r}")
        if not (self.mult or self.houlsby):
            raise ConfigError(f"'adapter' ({self.adapter!r}) needs 'mult' or 'houlsby': true (the "
                              "adapter sits beside each layer or in the FFN sublayer)")
        if self.pals and self.adapter != "pals":
            raise ConfigError(f"'pals' is true but 'adapter' is {self.adapter!r}: set one of them")


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
# BERT blocks
# --------------------------------------------------------------------------------------


class BERTLayerNorm(nn.Module):
    """TF-style LayerNorm (biased variance, eps inside the sqrt) with ``gamma``/``beta``.

    Width is hidden_size, or hidden_size_aug inside the projected attention blocks.
    """

    def __init__(self, config: BertConfig, multi_params=None, variance_epsilon: float | None = None):
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

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
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

    def __init__(self, config: BertConfig, multi_params: int | None = None):
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
        self.query = nn.Linear(width, self.all_head_size)
        self.key = nn.Linear(width, self.all_head_size)
        self.value = nn.Linear(width, self.all_head_size)
        self.dropout = Dropout(config.attention_probs_dropout_prob)
        self.kernels = Kernels()

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_length, _ = x.shape  # [B, T, n*d]
        x = x.view(batch, seq_length, self.num_attention_heads, self.attention_head_size)
        return x.transpose(1, 2)  # [B, n, T, d]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """hidden_states [B, T, width], attention_mask additive [B, 1, 1, T] or None -> [B, T, n*d]."""
        query = self._split_heads(self.query(hidden_states))  # [B, n, T, d]
        key = self._split_heads(self.key(hidden_states))  # [B, n, T, d]
        value = self._split_heads(self.value(hidden_states))  # [B, n, T, d]
        dropout_p = self.dropout.p if self.training else 0.0
        # softmax(Q·Kᵀ/sqrt(d) + mask) with dropout on the probabilities, then ·V.
        context = attention(query, key, value, attention_mask, dropout_p,
                            fast_dropout=self.kernels.fast_dropout)  # [B, n, T, d]
        batch, _, seq_length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, seq_length, self.all_head_size)  # [B, T, n*d]


class BERTSelfOutput(nn.Module):
    """Attention output projection, dropout, (Houlsby adapter), residual and LayerNorm.

    out = LN(dropout(W_O · c) + x), with houlsby: LN(o + adapter_i(o) + x), o = dropout(W_O · c)
    """

    def __init__(self, config: BertConfig, multi_params=None, houlsby: bool = False):
        super().__init__()
        width = config.hidden_size_aug if multi_params is not None else config.hidden_size
        if houlsby:
            # The attention-position adapter is always low-rank (width extra_dim if set).
            # Built before the dense layer, as the original (construction order, see BERTEncoder).
            self.multi_layers = task_adapters(config, "low_rank")
        self.dense = nn.Linear(width, width)
        self.LayerNorm = BERTLayerNorm(config, multi_params)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.houlsby = houlsby

    def forward(self, hidden_states, input_tensor, attention_mask=None, i: Task = 0) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))  # [B, T, H]
        if self.houlsby:
            hidden_states = hidden_states + per_task(self.multi_layers, i, hidden_states, attention_mask)
        return self.LayerNorm(hidden_states + input_tensor)  # [B, T, H]


class BERTAttention(nn.Module):
    """Self-attention sublayer: attention, output projection, residual, LayerNorm."""

    def __init__(self, config: BertConfig, multi_params=None, houlsby: bool = False):
        super().__init__()
        self.self = BERTSelfAttention(config, multi_params)
        self.output = BERTSelfOutput(config, multi_params, houlsby)

    def forward(self, input_tensor, attention_mask, i: Task = 0) -> torch.Tensor:
        context = self.self(input_tensor, attention_mask)  # [B, T, H]
        return self.output(context, input_tensor, attention_mask, i=i)


class BERTIntermediate(nn.Module):
    """First FFN matrix and GELU: [B, T, H] -> [B, T, I]."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return gelu(self.dense(hidden_states))  # [B, T, I]


class BERTOutput(nn.Module):
    """Second FFN matrix, dropout, (Houlsby adapter), residual and LayerNorm.

    out = LN(dropout(W_2 · f) + a), with houlsby: LN(o + adapter_i(a) + a): the
    FFN-position adapter reads ``input_tensor`` a (the FFN sublayer's input), not the
    FFN output o, the original's "approximate" Houlsby wiring.
    """

    def __init__(self, config: BertConfig, houlsby: bool = False):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = BERTLayerNorm(config)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.houlsby = houlsby
        if houlsby:
            self.multi_layers = task_adapters(config, config.adapter_name)

    def forward(self, hidden_states, input_tensor, attention_mask=None, i: Task = 0) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))  # [B, T, H]
        if self.houlsby:
            hidden_states = hidden_states + per_task(self.multi_layers, i, input_tensor, attention_mask)
        return self.LayerNorm(hidden_states + input_tensor)  # [B, T, H]


# --------------------------------------------------------------------------------------
# Adapters and their registry
#
# An adapter is a module built from the config alone, ``cls(config)``, called as
# ``adapter(h [B, T, H], attention_mask additive [B, 1, 1, T] or None) -> [B, T, H]``.
# One is built per task, under ``multi_layers.<task>`` (a name containing "mult", so
# checkpointing treats its parameters as task-specific). Where it sits:
#   mult      beside the whole layer: out = LN(FFN(a) + a + adapter_i(h)), h = layer input
#   houlsby   FFN position: LN(o + adapter_i(a) + a), a = FFN input; the attention
#             position keeps the low-rank adapter: LN(o + low_rank_i(o) + x)
# --------------------------------------------------------------------------------------


class BERTLowRank(nn.Module):
    """Low-rank adapter W_D · gelu(W_E · h): H -> width -> H, width extra_dim if set, else A."""

    def __init__(self, config: BertConfig, extra_dim=None):
        super().__init__()
        width = config.low_rank_width  # the original ignores the extra_dim argument too
        self.aug_dense = nn.Linear(config.hidden_size, width)  # W_E
        self.aug_dense2 = nn.Linear(width, config.hidden_size)  # W_D

    def forward(self, hidden_states: torch.Tensor, attention_mask=None) -> torch.Tensor:
        return self.aug_dense2(gelu(self.aug_dense(hidden_states)))  # [B, T, H]


class BERTPals(nn.Module):
    """Projected attention layer: PAL(h) = gelu(V_D · MHA_6(V_E · h)).

    V_E: H -> A and V_D: A -> H are tied across layers per task (the encoder registers
    one pair per task in every layer's PAL). The GELU acts on the H-wide output; there
    is no nonlinearity between V_E and the attention, and the attention has no output
    matrix (as in the original).
    """

    def __init__(self, config: BertConfig, extra_dim=None):
        super().__init__()
        # Registered in the original's order: V_E, V_D, then the attention.
        self.aug_dense = nn.Linear(config.hidden_size, config.hidden_size_aug)  # V_E
        self.aug_dense2 = nn.Linear(config.hidden_size_aug, config.hidden_size)  # V_D
        self.attn = BERTSelfAttention(config, PAL_HEADS)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        projected = self.aug_dense(hidden_states)  # [B, T, A]
        attended = self.attn(projected, attention_mask)  # [B, T, A]
        return gelu(self.aug_dense2(attended))  # [B, T, H]


class BERTLhuc(nn.Module):
    """LHUC: LHUC(h) = 2·sigmoid(r) ⊙ h, r [H] initialised to 0 (the identity)."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.lhuc = nn.Parameter(torch.zeros(config.hidden_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * (2.0 * torch.sigmoid(self.lhuc))  # [B, T, H]


# name -> adapter class; the config key ``adapter`` picks one (None: the ``pals`` flag).
ADAPTERS: dict[str, Callable[[BertConfig], nn.Module]] = {"pals": BERTPals, "low_rank": BERTLowRank}
_BUILT_IN_ADAPTERS = frozenset(ADAPTERS)


def register_adapter(name: str, cls: Callable[[BertConfig], nn.Module]) -> Callable[[BertConfig], nn.Module]:
    """Make ``cls`` available as ``"adapter": name`` in configs; returns ``cls``.

    ``cls(config)`` must build one task's adapter (see the section comment above for
    the call). Registering the same class again is allowed; another class under a name
    already taken is a ValueError.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an adapter name must be a non-empty string, got {name!r}")
    if not callable(cls):
        raise TypeError(f"adapter {name!r}: {cls!r} is not a class or callable")
    if name in ADAPTERS and ADAPTERS[name] is not cls:
        owner = "a built-in adapter" if name in _BUILT_IN_ADAPTERS else f"{ADAPTERS[name]!r}"
        raise ValueError(f"adapter name {name!r} is already registered ({owner})")
    ADAPTERS[name] = cls
    return cls


def task_adapters(config: BertConfig, name: str) -> nn.ModuleList:
    """One adapter ``ADAPTERS[name]`` per task: one built, deep-copied per task (see
    ``deep_copies``)."""
    try:
        adapter = ADAPTERS[name]
    except KeyError:
        raise ConfigError(f"'adapter' {name!r} is not registered; registered adapters: "
                          f"{', '.join(sorted(ADAPTERS))}") from None
    return deep_copies(adapter(config), config.num_tasks)


def deep_copies(module: nn.Module, count: int) -> nn.ModuleList:
    """``count`` deep copies of one built module, as the original made every per-task
    list (and the layers of a model without adapters).

    The copies start equal, and ``init_weights`` then draws every copy's weights anew;
    what copying keeps is the number of random draws at construction (one module's, not
    one per copy). With the original's registration order everywhere and one
    ``init_weights`` over the whole model, a seed gives the original's initial values.
    """
    return nn.ModuleList(copy.deepcopy(module) for _ in range(count))


# --------------------------------------------------------------------------------------
# One task per batch, or one per row
#
# Every task-specific part (adapter, LHUC, module on top, head) is called through
# ``per_task(parts, i, *inputs)``. With an int ``i`` that is ``parts[i](*inputs)``, the
# original's call. With ``TaskRows`` (a mixed-task batch) each task's part runs on that
# task's rows only, and the results are put back in row order; everything shared runs
# once over all rows.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRows:
    """Which rows of a mixed-task batch belong to which task (built by ``resolve_task``)."""

    tasks: tuple[int, ...]  # the distinct tasks, ascending
    rows: tuple[slice | torch.Tensor, ...]  # each task's rows: a slice when consecutive, else indexes [B_t]
    restore: torch.Tensor | None  # [B] row order from task-grouped order; None when already grouped

    @classmethod
    def of(cls, task_ids: Sequence[int], device: torch.device) -> TaskRows:
        tasks = tuple(sorted(set(task_ids)))
        counts = [task_ids.count(task) for task in tasks]
        if list(task_ids) == sorted(task_ids):  # rows grouped by task: slices are views
            ends = itertools.accumulate(counts)
            return cls(tasks, tuple(slice(end - n, end) for end, n in zip(ends, counts)), None)
        order = torch.argsort(torch.tensor(task_ids, device=device), stable=True)  # [B], grouped by task
        return cls(tasks, tuple(order.split(counts)), torch.argsort(order))


Task = int | TaskRows


def per_task(parts: nn.ModuleList | Callable[..., torch.Tensor], i: Task, *inputs: torch.Tensor | None) -> torch.Tensor:
    """``parts[i](*inputs)``, or for a mixed-task batch each task's part on its own rows.

    ``parts`` is a per-task ModuleList, or a function ``(task, *inputs)``. Inputs are
    [B, ...] tensors (or None, passed on as is); every task's output is [B_t, ...] with
    the same trailing shape, and the result is [B, ...] in the batch's row order.
    """
    def run(task: int, *args):
        return parts[task](*args) if isinstance(parts, nn.ModuleList) else parts(task, *args)

    if not isinstance(i, TaskRows):
        return run(i, *inputs)
    if len(i.tasks) == 1:
        return run(i.tasks[0], *inputs)
    outputs = [run(task, *(None if x is None else x[rows] for x in inputs))  # [B_t, ...]
               for task, rows in zip(i.tasks, i.rows)]
    grouped = torch.cat(outputs)  # [B, ...], rows grouped by task
    return grouped if i.restore is None else grouped.index_select(0, i.restore)


def resolve_task(i: int | torch.Tensor | TaskRows, num_tasks: int, batch_size: int) -> Task:
    """Check a task index: an int in [0, num_tasks), or per-row task ids [B] (TaskRows).

    A bad index is a one-line UsageError (ModuleList would raise a bare IndexError, or
    silently take a negative index from the end).
    """
    if isinstance(i, TaskRows):
        return i
    if isinstance(i, torch.Tensor) and i.dim() == 1:
        if i.dtype.is_floating_point or i.dtype == torch.bool or len(i) != batch_size:
            raise UsageError(f"per-row task ids must be an integer tensor of {batch_size} values (one per "
                             f"row), got {i.dtype} of shape {tuple(i.shape)}")
        task_ids = i.tolist()
        bad = next((row for row, task in enumerate(task_ids) if not 0 <= task < num_tasks), None)
        if bad is not None:
            raise UsageError(f"task id {task_ids[bad]} (row {bad}) is out of range: the model has "
                             f"{num_tasks} task(s), 0..{num_tasks - 1}")
        return TaskRows.of(task_ids, i.device)
    try:
        task = operator.index(i)  # an int, a numpy integer or a 0-d integer tensor
    except TypeError:
        task = None
    if task is None or isinstance(i, bool) or (isinstance(i, torch.Tensor) and i.dim() != 0):
        raise UsageError(f"a task id must be an int or a 1-D tensor of per-row task ids, got {i!r}")
    if not 0 <= task < num_tasks:
        raise UsageError(f"task id {task} is out of range: the model has {num_tasks} task(s), 0..{num_tasks - 1}")
    return task


# --------------------------------------------------------------------------------------
# Layer and encoder
# --------------------------------------------------------------------------------------


class BERTLayer(nn.Module):
    """One transformer layer, with the adapters the config asks for.

    plain:   a = LN(x + attn(x)),  out = LN(a + FFN(a))
    mult:    out = LN(FFN(a) + a + adapter_i(x))       adapter beside the whole layer
    houlsby: adapters inside both sublayers (BERTSelfOutput, BERTOutput)
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
            self.multi_lhuc = deep_copies(BERTLhuc(config), config.num_tasks)
        if mult:
            self.multi_layers = task_adapters(config, config.adapter_name)

    def forward(self, hidden_states, attention_mask, i: Task = 0) -> torch.Tensor:
        attention_output = self.attention(hidden_states, attention_mask, i)  # [B, T, H]
        intermediate_output = self.intermediate(attention_output)  # [B, T, I]
        if self.mult:
            extra = per_task(self.multi_layers, i, hidden_states, attention_mask)  # [B, T, H], reads the layer input
            if self.lhuc:
                extra = per_task(self.multi_lhuc, i, extra)
            return self.output(intermediate_output, attention_output + extra)
        # Houlsby adapters get the task index and mask; with LHUC too, the original took
        # an LHUC branch first that dropped both (task 0's adapter for every task).
        layer_output = self.output(intermediate_output, attention_output, attention_mask, i)  # [B, T, H]
        if self.lhuc:
            layer_output = per_task(self.multi_lhuc, i, layer_output)
        return layer_output


class BERTEncoder(nn.Module):
    """The stack of layers, the tied PAL projections and the per-task modules on top."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        # As the original: layers with adapters are built one by one, plain layers
        # (top, LHUC alone, shared only) as one layer deep-copied.
        if config.mult or config.houlsby:
            self.layer = nn.ModuleList(
                BERTLayer(config, mult=config.mult, houlsby=config.houlsby)
                for _ in range(config.num_hidden_layers)
            )
        else:
            self.layer = deep_copies(BERTLayer(config), config.num_hidden_layers)
        if config.top:
            self._build_top(config)
        if config.uses_shared_pals:
            self._tie_pal_projections(config)

    def _build_top(self, config: BertConfig) -> None:
        tasks = config.num_tasks
        if config.bert_lay_top:
            self.multi_layers = deep_copies(BERTLayer(config), tasks)
            return
        self.mult_dense = deep_copies(nn.Linear(config.hidden_size, config.hidden_size_aug), tasks)
        self.mult_dense2 = deep_copies(nn.Linear(config.hidden_size_aug, config.hidden_size), tasks)
        blocks = nn.ModuleList(BERTAttention(config, TOP_ATTENTION_HEADS) for _ in range(TOP_ATTENTION_BLOCKS))
        self.multi_layers = deep_copies(blocks, tasks)

    def _tie_pal_projections(self, config: BertConfig) -> None:
        """One V_E and one V_D per task, registered in every layer's PAL (as the original).

        The state dict lists each tied tensor once per layer plus once under
        ``mult_aug_dense``; ``parameters()`` yields it once.
        """
        tasks = config.num_tasks
        self.mult_aug_dense = deep_copies(nn.Linear(config.hidden_size, config.hidden_size_aug), tasks)
        self.mult_aug_dense2 = deep_copies(nn.Linear(config.hidden_size_aug, config.hidden_size), tasks)
        if config.houlsby:
            # The original built a third Linear here and never used it: built and dropped,
            # it draws the same random numbers (no parameters are kept).
            nn.Linear(config.hidden_size, config.hidden_size_aug)
        for layer in self.layer:
            pals = layer.output.multi_layers if config.houlsby else layer.multi_layers
            for task, pal in enumerate(pals):
                pal.aug_dense = self.mult_aug_dense[task]
                pal.aug_dense2 = self.mult_aug_dense2[task]

    def forward(self, hidden_states, attention_mask, i: Task = 0) -> list[torch.Tensor]:
        all_encoder_layers = []
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask, i)
            all_encoder_layers.append(hidden_states)
        if self.config.top:
            # The task's module on top replaces the last output (no residual to it).
            all_encoder_layers[-1] = per_task(self._run_top, i, hidden_states, attention_mask)
        return all_encoder_layers

    def _run_top(self, i: int, hidden_states, attention_mask) -> torch.Tensor:
        """Top attention: top_i(h) = D_i · B_i,6(... B_i,1(E_i · h)), each B a 12-head
        attention sublayer over A (with its output matrix, residual and LayerNorm);
        E_i = mult_dense: H -> A, D_i = mult_dense2: A -> H. Or, with bert_lay_top, a
        full BERT layer per task."""
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
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor, i: Task = 0) -> torch.Tensor:
        first_token = hidden_states[:, 0]  # [B, H]
        return self.activation(self.dense(first_token))


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] of 1 (token) / 0 (padding) -> additive [B, 1, 1, T] of 0 / -10000."""
    mask = attention_mask[:, None, None, :].to(dtype)  # [B, 1, 1, T]
    return (1.0 - mask) * MASK_VALUE


def attention_mask_dtype(reference: torch.Tensor) -> torch.dtype:
    """The dtype the attention computes in for activations like ``reference``: the
    autocast dtype under autocast, else the activations' own (so the additive mask is
    built once in that dtype instead of cast in every layer)."""
    device_type = reference.device.type
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return reference.dtype


class BertModel(nn.Module):
    """BERT: embeddings, encoder (with adapters) and pooler.

    forward(input_ids [B, T], token_type_ids [B, T] or None, attention_mask [B, T] or
    None, i = task index, or per-row task ids [B]) returns (all_encoder_layers,
    pooled_output): a list of num_hidden_layers tensors [B, T, H] (embeddings not
    included) and [B, H].
    ``kernels`` (keyword only) chooses the speed kernels, default ``Kernels()`` (all
    fast); ``Kernels.plain()`` uses torch's dropout (see kernels.py).
    """

    def __init__(self, config: BertConfig, *, kernels: Kernels | None = None):
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = BERTEmbeddings(config)
        self.encoder = BERTEncoder(config)
        self.pooler = BERTPooler(config)
        self.kernels = Kernels() if kernels is None else kernels
        set_kernels(self, self.kernels)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, i: int | torch.Tensor = 0):
        i = resolve_task(i, self.config.num_tasks, input_ids.size(0))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embedding_output = self.embeddings(input_ids, token_type_ids)  # [B, T, H]
        # Built once here, in the dtype the attention computes in, and reused by every
        # layer and adapter. A batch without padding needs no mask (adding 0 changes nothing).
        if not torch.compiler.is_compiling() and bool(attention_mask.bool().all()):
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


def standard_layer_norm_init(model: nn.Module) -> nn.Module:
    """Set every LayerNorm to gamma 1, beta 0 (the usual init; ``--layer_norm_init standard``).

    Call it before loading pretrained weights: LayerNorms the checkpoint holds are then
    overwritten, and only the task-specific ones (adapters, modules on top) keep 1 and 0.
    With the original init (gamma and beta ~ N(0, 0.02)) the attention blocks on top start
    with outputs near zero and barely pass gradient to BERT, so short runs may not learn.
    Returns ``model``.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BERTLayerNorm):
                module.gamma.fill_(1.0)
                module.beta.zero_()
    return model


class _BertHead(nn.Module):
    """Shared plumbing of the heads: a ``bert`` trunk, the original initialisation and
    the speed kernels (``kernels``, keyword only in every head: see BertModel)."""

    def __init__(self, config: BertConfig, *, kernels: Kernels | None = None):
        super().__init__()
        config.validate()
        self.config = config
        self.kernels = Kernels() if kernels is None else kernels
        self.bert = BertModel(config, kernels=self.kernels)

    def init_weights(self) -> None:
        self.apply(lambda module: init_bert_weights(module, self.config.initializer_range))

    def _finish_init(self) -> None:
        """Once the head's own modules exist: the original initialisation, the kernels."""
        self.init_weights()
        set_kernels(self, self.kernels)


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
    With per-row task ids ``task_id`` [B] (a mixed-task batch) it returns logits
    [B, max n_labels]: row r holds its task's logits, and the columns past that task's
    label count are -inf (so softmax and argmax per row are unchanged); no labels then.
    ``name`` is the original's unused task name: labels go in as ``labels=``.
    """

    def __init__(self, config: BertConfig, tasks: Sequence[int], *, kernels: Kernels | None = None):
        super().__init__(config, kernels=kernels)
        tasks = [int(n) for n in tasks]
        if len(tasks) != config.num_tasks:
            raise ConfigError(f"{len(tasks)} task heads given but config.num_tasks is "
                              f"{config.num_tasks}; set num_tasks to the number of tasks")
        if any(n < 1 for n in tasks):
            raise ConfigError(f"every task needs at least one label, got {tasks}")
        self.num_labels = tasks
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.ModuleList(nn.Linear(config.hidden_size, n) for n in tasks)
        self._finish_init()

    def forward(self, input_ids, token_type_ids, attention_mask, task_id, name: str = "cola", labels=None):
        if isinstance(name, torch.Tensor):
            raise UsageError("BertForMultiTask: the fifth argument is the unused task name, not the labels; "
                             "pass them as labels=labels")
        task = resolve_task(task_id, self.config.num_tasks, input_ids.size(0))
        _, pooled_output = self.bert(input_ids, token_type_ids, attention_mask, task)
        pooled_output = self.dropout(pooled_output)  # [B, H]
        if isinstance(task, TaskRows):
            if labels is not None:
                raise UsageError("BertForMultiTask: labels need one task per batch (an int task_id); "
                                 "a mixed-task batch returns logits only")
            return per_task(self._padded_logits, task, pooled_output)  # [B, max n_labels]
        logits = self.classifier[task](pooled_output)  # [B, n_labels]
        if labels is None:
            return logits
        return classification_loss(logits, labels, self.num_labels[task]), logits

    def _padded_logits(self, task: int, pooled_output: torch.Tensor) -> torch.Tensor:
        """One task's logits [B_t, n], padded with -inf to [B_t, max n_labels]."""
        logits = self.classifier[task](pooled_output)
        return F.pad(logits, (0, max(self.num_labels) - logits.size(-1)), value=-math.inf)


class BertForSequenceClassification(_BertHead):
    """Single-task classifier on the pooled output (task index 0)."""

    def __init__(self, config: BertConfig, num_labels: int, *, kernels: Kernels | None = None):
        super().__init__(config, kernels=kernels)
        self.num_labels = num_labels
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self._finish_init()

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

    def __init__(self, config: BertConfig, *, kernels: Kernels | None = None):
        super().__init__(config, kernels=kernels)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self._finish_init()

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

    def __init__(self, config: BertConfig, num_choices: int = 2, *, kernels: Kernels | None = None):
        super().__init__(config, kernels=kernels)
        self.num_choices = num_choices
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self._finish_init()

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
# State-dict keys: shared BERT or task-specific, and which task
# --------------------------------------------------------------------------------------

# The submodules of BertModel; a key under none of them (classifier, qa_outputs) is a head.
BERT_SUBMODULES = ("embeddings.", "encoder.", "pooler.")


def is_task_specific(key: str) -> bool:
    """Adapters, LHUC, modules on top and heads: parameters a BERT checkpoint lacks."""
    bare = key[len("bert."):] if key.startswith("bert.") else key
    if not bare.startswith(BERT_SUBMODULES):
        return True  # classifier, qa_outputs ...
    return any(marker in bare for marker in TASK_SPECIFIC_MARKERS)


TASK_INDEX_PATTERN = re.compile(r"(?:multi_layers|multi_lhuc|mult_aug_dense2?|mult_dense2?|classifier)\.(\d+)")


def task_of_key(key: str) -> int | None:
    """The task a state-dict key belongs to, or None for shared BERT weights.

    Every task-specific module sits in a per-task ModuleList (``multi_layers``,
    ``multi_lhuc``, ``mult_aug_dense(2)``, ``mult_dense(2)``, ``classifier``); the
    index right after that name is the task.
    """
    match = TASK_INDEX_PATTERN.search(key)
    return int(match.group(1)) if match else None


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied tensors counted once), as the original logged."""
    return sum(p.numel() for p in model.parameters())
