"""BERT with task-specific adapters for multi-task learning ("BERT and PALs").

One BERT is shared by all tasks; each task adds a few parameters of its own and a
head. The architectures (chosen by flags in ``BertConfig``, configuration.py):

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
registry ``ADAPTERS`` ("pals", "low_rank"; ``register_adapter`` adds more, also from a
user's own file: ``load_adapter_module``); the config key ``adapter`` names one, and
without it the ``pals`` flag chooses, as in the original.

Every task-specific part (adapters, LHUC, modules on top, the tied PAL projections,
heads) is one module per task in a per-task list named in ``TASK_LISTS``; which
state-dict keys are task-specific, and whose, follows from that (``task_of_key``).

The task index ``task_id`` is an int, one task for the whole batch as in the original,
or a LongTensor [B] of per-row task ids for a batch that mixes tasks: the shared layers
then run once over all rows and each task-specific part runs on its own rows
(``per_task``, the one place that dispatches rows to tasks). ``BertModel.forward`` keeps
the original's name for it, ``i``.

Layout of this file: BERT blocks; adapters and their registry; one task or one per
row; layer and encoder; BertModel; heads; which state-dict keys are task-specific. The
configuration is configuration.py (``BertConfig`` is importable from here too). The
speed kernels (dropout masks and the attention with dropout) live in kernels.py and are
chosen when a model is built: ``BertModel(config, kernels=Kernels.plain())``.

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
import importlib.util
import itertools
import logging
import math
import operator
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from configuration import PAL_HEADS, TOP_ATTENTION_HEADS, BertConfig
from errors import ConfigError, Error, UsageError
from kernels import Dropout, Kernels, attention, set_kernels

logger = logging.getLogger(__name__)

TOP_ATTENTION_BLOCKS = 6  # projected attention blocks per task on top
MASK_VALUE = -10000.0  # additive attention mask for padding, as in the original


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU: x · 0.5 · (1 + erf(x / sqrt(2)))."""
    return F.gelu(x)


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
        if multi_params is not None:  # the config checked that n divides the width
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

    def forward(self, hidden_states, input_tensor, attention_mask=None, task_id: Task = 0) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))  # [B, T, H]
        if self.houlsby:
            hidden_states = hidden_states + per_task(self.multi_layers, task_id, hidden_states, attention_mask)
        return self.LayerNorm(hidden_states + input_tensor)  # [B, T, H]


class BERTAttention(nn.Module):
    """Self-attention sublayer: attention, output projection, residual, LayerNorm."""

    def __init__(self, config: BertConfig, multi_params=None, houlsby: bool = False):
        super().__init__()
        self.self = BERTSelfAttention(config, multi_params)
        self.output = BERTSelfOutput(config, multi_params, houlsby)

    def forward(self, input_tensor, attention_mask, task_id: Task = 0) -> torch.Tensor:
        context = self.self(input_tensor, attention_mask)  # [B, T, H]
        return self.output(context, input_tensor, attention_mask, task_id)


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

    def forward(self, hidden_states, input_tensor, attention_mask=None, task_id: Task = 0) -> torch.Tensor:
        hidden_states = self.dropout(self.dense(hidden_states))  # [B, T, H]
        if self.houlsby:
            hidden_states = hidden_states + per_task(self.multi_layers, task_id, input_tensor, attention_mask)
        return self.LayerNorm(hidden_states + input_tensor)  # [B, T, H]


# --------------------------------------------------------------------------------------
# Adapters and their registry
#
# An adapter is a module built from the config alone, ``cls(config)``, called as
# ``adapter(h [B, T, H], attention_mask additive [B, 1, 1, T] or None) -> [B, T, H]``.
# One is built per task, in the per-task list ``multi_layers`` (see TASK_LISTS at the
# end of this file), so all its parameters belong to that task. Where it sits:
#   mult      beside the whole layer: out = LN(FFN(a) + a + adapter_i(h)), h = layer input
#   houlsby   FFN position: LN(o + adapter_i(a) + a), a = FFN input; the attention
#             position keeps the low-rank adapter: LN(o + low_rank_i(o) + x)
# --------------------------------------------------------------------------------------


class BERTLowRank(nn.Module):
    """Low-rank adapter W_D · gelu(W_E · h): H -> width -> H, width extra_dim if set, else A."""

    def __init__(self, config: BertConfig):
        super().__init__()
        width = config.low_rank_width  # config key extra_dim, else hidden_size_aug
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

    def __init__(self, config: BertConfig):
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
BUILT_IN_ADAPTERS = frozenset(ADAPTERS)


def register_adapter(name: str, cls: Callable[[BertConfig], nn.Module]) -> Callable[[BertConfig], nn.Module]:
    """Make ``cls`` available as ``"adapter": name`` in configs; returns ``cls``.

    Registering declares ``cls`` a per-task module, as PEFT's ``register_peft_method``
    declares a tuner: the model builds one ``cls(config)`` per task in the per-task list
    ``multi_layers``, so every parameter of it, whatever its name, is that task's: it
    trains under --freeze, goes into the task's adapter file and stays out of the shared
    BERT. ``cls(config)`` must build one task's adapter (see the section comment above
    for the call). Registering the same class again is allowed; another class under a
    name already taken is a ConfigError.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"an adapter name must be a non-empty string, got {name!r}")
    if not callable(cls):
        raise ConfigError(f"adapter {name!r}: {cls!r} is not a class or callable")
    if name in ADAPTERS and ADAPTERS[name] is not cls:
        owner = "a built-in adapter" if name in BUILT_IN_ADAPTERS else f"by {ADAPTERS[name]!r}"
        raise ConfigError(f"adapter name {name!r} is already registered ({owner}): choose another name")
    ADAPTERS[name] = cls
    return cls


def adapter_class(name: str) -> Callable[[BertConfig], nn.Module]:
    """The adapter registered as ``name``; a one-line ConfigError naming the registered ones."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ConfigError(f"'adapter' {name!r} is not a registered adapter (registered: "
                          f"{', '.join(sorted(ADAPTERS))}); an adapter defined in your own file is "
                          "loaded with --adapter_module FILE") from None


def check_adapter_registered(config: BertConfig, source: str | os.PathLike) -> None:
    """Before a model is built: a ConfigError naming ``source`` (where the config came
    from) when the config's adapter is not registered."""
    try:
        adapter_class(config.adapter_name)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def task_adapters(config: BertConfig, name: str) -> nn.ModuleList:
    """One adapter ``ADAPTERS[name]`` per task: one built, deep-copied per task (see
    ``deep_copies``)."""
    return deep_copies(adapter_class(name)(config), config.num_tasks)


def deep_copies(module: nn.Module, count: int) -> nn.ModuleList:
    """``count`` deep copies of one built module, as the original made every per-task
    list (and the layers of a model without adapters).

    The copies start equal, and ``init_weights`` then draws every copy's weights anew;
    what copying keeps is the number of random draws at construction (one module's, not
    one per copy). With the original's registration order everywhere and one
    ``init_weights`` over the whole model, a seed gives the original's initial values.
    """
    return nn.ModuleList(copy.deepcopy(module) for _ in range(count))


# Files imported by load_adapter_module (resolved path -> the adapter names they registered).
_ADAPTER_MODULES: dict[Path, list[str]] = {}


def load_adapter_module(path: str | os.PathLike) -> list[str]:
    """Import a user's Python file that registers adapters (the scripts' ``--adapter_module``)
    and return the names it registered, so a config can name one (``"adapter": name``).

    The file calls ``modeling.register_adapter(name, cls)``; it runs once per process
    (asked again while its adapters are registered, the same names come back). A missing file, a file that fails to import,
    registers nothing, or takes a name already registered is a one-line UsageError naming
    the file, and leaves the registry as it was.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"{file}: adapter module not found" if not file.exists()
                         else f"{file}: the adapter module is not a file")
    resolved = file.resolve()
    if resolved in _ADAPTER_MODULES and all(name in ADAPTERS for name in _ADAPTER_MODULES[resolved]):
        return list(_ADAPTER_MODULES[resolved])  # imported before and still registered
    module_name = f"_adapter_module_{len(_ADAPTER_MODULES)}_{resolved.stem}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise UsageError(f"{file}: not a Python file (an adapter module ends in .py)")
    before = dict(ADAPTERS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # classes defined in it (dataclasses, pickling) find their module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's code: any failure is reported as one line
        _restore_registry(before, module_name)
        if isinstance(err, Error):
            raise UsageError(f"{file}: {err}") from err
        where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        raise UsageError(f"{file}: cannot import it{where}: {type(err).__name__}: {err}") from err
    names = [name for name in ADAPTERS if name not in before]
    if not names:
        _restore_registry(before, module_name)
        raise UsageError(f"{file}: registers no adapter (call modeling.register_adapter(name, cls) in it)")
    _ADAPTER_MODULES[resolved] = names
    logger.info("adapter module %s registered %s", file, ", ".join(names))
    return list(names)


def _restore_registry(before: dict[str, Callable[[BertConfig], nn.Module]], module_name: str) -> None:
    ADAPTERS.clear()
    ADAPTERS.update(before)
    sys.modules.pop(module_name, None)


# --------------------------------------------------------------------------------------
# One task per batch, or one per row
#
# Every task-specific part (adapter, LHUC, module on top, head) is called through
# ``per_task(parts, task_id, *inputs)``. With an int that is ``parts[task_id](*inputs)``, the
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


def per_task(parts: nn.ModuleList | Callable[..., torch.Tensor], task_id: Task,
             *inputs: torch.Tensor | None) -> torch.Tensor:
    """``parts[task_id](*inputs)``, or for a mixed-task batch each task's part on its own rows.

    ``parts`` is a per-task ModuleList, or a function ``(task, *inputs)``. Inputs are
    [B, ...] tensors (or None, passed on as is); every task's output is [B_t, ...] with
    the same trailing shape, and the result is [B, ...] in the batch's row order.
    """
    def run(task: int, *args):
        return parts[task](*args) if isinstance(parts, nn.ModuleList) else parts(task, *args)

    if not isinstance(task_id, TaskRows):
        return run(task_id, *inputs)
    if len(task_id.tasks) == 1:
        return run(task_id.tasks[0], *inputs)
    outputs = [run(task, *(None if x is None else x[rows] for x in inputs))  # [B_t, ...]
               for task, rows in zip(task_id.tasks, task_id.rows)]
    grouped = torch.cat(outputs)  # [B, ...], rows grouped by task
    return grouped if task_id.restore is None else grouped.index_select(0, task_id.restore)


def resolve_task(task_id: int | torch.Tensor | TaskRows, num_tasks: int, batch_size: int) -> Task:
    """Check a task index: an int in [0, num_tasks), or per-row task ids [B] (TaskRows).

    A bad index is a one-line UsageError (ModuleList would raise a bare IndexError, or
    silently take a negative index from the end).
    """
    if isinstance(task_id, TaskRows):
        return task_id
    if isinstance(task_id, torch.Tensor) and task_id.dim() == 1:
        if task_id.dtype.is_floating_point or task_id.dtype == torch.bool or len(task_id) != batch_size:
            raise UsageError(f"per-row task ids must be an integer tensor of {batch_size} values (one per "
                             f"row), got {task_id.dtype} of shape {tuple(task_id.shape)}")
        task_ids = task_id.tolist()
        bad = next((row for row, task in enumerate(task_ids) if not 0 <= task < num_tasks), None)
        if bad is not None:
            raise UsageError(f"task id {task_ids[bad]} (row {bad}) is out of range: the model has "
                             f"{num_tasks} task(s), 0..{num_tasks - 1}")
        return TaskRows.of(task_ids, task_id.device)
    try:
        task = operator.index(task_id)  # an int, a numpy integer or a 0-d integer tensor
    except TypeError:
        task = None
    if task is None or isinstance(task_id, bool) or (isinstance(task_id, torch.Tensor) and task_id.dim() != 0):
        raise UsageError(f"a task id must be an int or a 1-D tensor of per-row task ids, got {task_id!r}")
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

    def forward(self, hidden_states, attention_mask, task_id: Task = 0) -> torch.Tensor:
        attention_output = self.attention(hidden_states, attention_mask, task_id)  # [B, T, H]
        intermediate_output = self.intermediate(attention_output)  # [B, T, I]
        if self.mult:
            extra = per_task(self.multi_layers, task_id, hidden_states, attention_mask)  # [B, T, H], reads the layer input
            if self.lhuc:
                extra = per_task(self.multi_lhuc, task_id, extra)
            return self.output(intermediate_output, attention_output + extra)
        # Houlsby adapters get the task index and mask; with LHUC too, the original took
        # an LHUC branch first that dropped both (task 0's adapter for every task).
        layer_output = self.output(intermediate_output, attention_output, attention_mask, task_id)  # [B, T, H]
        if self.lhuc:
            layer_output = per_task(self.multi_lhuc, task_id, layer_output)
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

    def forward(self, hidden_states, attention_mask, task_id: Task = 0) -> list[torch.Tensor]:
        all_encoder_layers = []
        for layer_module in self.layer:
            hidden_states = layer_module(hidden_states, attention_mask, task_id)
            all_encoder_layers.append(hidden_states)
        if self.config.top:
            # The task's module on top replaces the last output (no residual to it).
            all_encoder_layers[-1] = per_task(self._run_top, task_id, hidden_states, attention_mask)
        return all_encoder_layers

    def _run_top(self, task_id: int, hidden_states, attention_mask) -> torch.Tensor:
        """Top attention: top_i(h) = D_i · B_i,6(... B_i,1(E_i · h)), each B a 12-head
        attention sublayer over A (with its output matrix, residual and LayerNorm);
        E_i = mult_dense: H -> A, D_i = mult_dense2: A -> H. Or, with bert_lay_top, a
        full BERT layer per task."""
        if self.config.bert_lay_top:
            return self.multi_layers[task_id](hidden_states, attention_mask, task_id)
        projected = self.mult_dense[task_id](hidden_states)  # [B, T, A]
        for block in self.multi_layers[task_id]:
            projected = block(projected, attention_mask)  # [B, T, A]
        return self.mult_dense2[task_id](projected)  # [B, T, H]


class BERTPooler(nn.Module):
    """tanh(W · h_[CLS]): one shared dense layer on the first token."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor, task_id: Task = 0) -> torch.Tensor:
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
    None, i = the task index or per-row task ids [B]; ``i`` is the original's name for
    what is ``task_id`` everywhere else) returns (all_encoder_layers,
    pooled_output): a list of num_hidden_layers tensors [B, T, H] (embeddings not
    included) and [B, H].
    ``kernels`` (keyword only) chooses the speed kernels, default ``Kernels()`` (all
    fast); ``Kernels.plain()`` uses torch's dropout (see kernels.py).
    """

    def __init__(self, config: BertConfig, *, kernels: Kernels | None = None):
        super().__init__()
        self.config = config
        self.embeddings = BERTEmbeddings(config)
        self.encoder = BERTEncoder(config)
        self.pooler = BERTPooler(config)
        self.kernels = Kernels() if kernels is None else kernels
        set_kernels(self, self.kernels)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, i: int | torch.Tensor = 0):
        task_id = resolve_task(i, self.config.num_tasks, input_ids.size(0))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embedding_output = self.embeddings(input_ids, token_type_ids)  # [B, T, H]
        # Built once here, in the dtype the attention computes in, and reused by every
        # layer and adapter. A batch without padding needs no mask (adding 0 changes nothing).
        if not torch.compiler.is_compiling() and bool(attention_mask.bool().all()):
            mask = None
        else:
            mask = extended_attention_mask(attention_mask, attention_mask_dtype(embedding_output))  # [B, 1, 1, T]
        all_encoder_layers = self.encoder(embedding_output, mask, task_id)
        pooled_output = self.pooler(all_encoder_layers[-1], task_id)
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

# The model's task-specific structure: every task-specific part is one module per task
# in a ModuleList under one of these names (the original's, kept by the state-dict
# keys), element t belonging to task t. Nothing else is task-specific but the heads.
TASK_LISTS = (
    "multi_layers",  # adapters (built-in and registered), the blocks or BERT layer on top
    "multi_lhuc",  # LHUC
    "mult_aug_dense", "mult_aug_dense2",  # the PALs' V_E, V_D (one per task, tied across layers)
    "mult_dense", "mult_dense2",  # E and D of the attention on top
    "classifier",  # BertForMultiTask's heads
)


def split_task_key(key: str) -> tuple[str, int, str] | None:
    """(per-task list, task, rest) of a state-dict key inside a per-task part, else None.

    ``bert.encoder.layer.3.multi_layers.1.attn.query.weight`` ->
    ``("bert.encoder.layer.3.multi_layers", 1, "attn.query.weight")``. The first per-task
    list on the key's path decides (a task's part may hold lists of its own).
    """
    parts = key.split(".")
    for n in range(len(parts) - 1):
        if parts[n] in TASK_LISTS and parts[n + 1].isdigit():
            return ".".join(parts[:n + 1]), int(parts[n + 1]), ".".join(parts[n + 2:])
    return None


def task_of_key(key: str) -> int | None:
    """The task a state-dict key belongs to, or None for shared BERT weights."""
    found = split_task_key(key)
    return None if found is None else found[1]


def key_for_task(key: str, task_id: int) -> str:
    """The same parameter of another task (adapter files keep each task under index 0)."""
    path, _, rest = split_task_key(key)
    return f"{path}.{task_id}.{rest}" if rest else f"{path}.{task_id}"


def is_task_specific(key: str) -> bool:
    """Adapters, LHUC, modules on top and heads: parameters a BERT checkpoint lacks."""
    bare = key.removeprefix("bert.")
    return not bare.startswith(BERT_SUBMODULES) or task_of_key(bare) is not None


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied tensors counted once), as the original logged."""
    return sum(p.numel() for p in model.parameters())
