"""BertConfig: the configuration of BertModel and its adapters, checked once when built.

Every key of the original's config files, with the original's defaults; the flags
``pals``, ``mult``, ``top``, ``lhuc``, ``houlsby`` and ``bert_lay_top`` choose the
architecture (see modeling.py). A config is frozen: it is validated when it is built
(``BertConfig(...)``, ``from_dict``, ``from_json_file``, ``replace``) and cannot change
afterwards, so the model's modules take it as valid. Hugging Face ``config.json`` files
load too (their other keys are kept, not used).

``extra_dim`` (a config key) is the width of the low-rank adapters when set, as in the
original; the original's ``extra_dim`` constructor argument of BERTPals/BERTLowRank,
accepted and ignored there, does not exist here.

``adapter`` names the adapter beside each layer (mult) or in the Houlsby FFN position,
from modeling's registry; whether that name is registered is checked when a model is
built (``modeling.adapter_class``), so a config may name an adapter that a user's file
registers later (``--adapter_module``).

This module imports nothing of the project but errors.py.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from errors import ConfigError

PAL_HEADS = 6  # heads inside a PAL; hard-coded in the original
TOP_ATTENTION_HEADS = 12  # heads inside each projected attention block on top

# The config flags that choose the architecture (see modeling.py's docstring).
ARCHITECTURE_FLAGS = ("pals", "mult", "top", "lhuc", "houlsby", "bert_lay_top")


@dataclass(frozen=True)
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
    extra_dim: int | None = None  # width of the low-rank adapters, if set (else hidden_size_aug)
    hidden_size_aug: int = 204  # projected width of PALs / low-rank / top attention
    layer_norm_eps: float = 1e-12
    # The adapter (a name registered in modeling.ADAPTERS) beside each layer (mult) or in
    # the Houlsby FFN position; None: the original's choice, "pals" if pals else "low_rank".
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
        """The name's form; whether it is registered is checked when a model is built."""
        if self.adapter is None:
            return
        if not isinstance(self.adapter, str) or not self.adapter:
            raise ConfigError(f"'adapter' must be the name of a registered adapter, got {self.adapter!r}")
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
