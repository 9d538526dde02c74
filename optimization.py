"""BERTAdam, the Adam variant BERT was trained with, and its learning-rate schedules."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.nn.utils import clip_grad_norm_
from torch.optim import Optimizer
from torch.optim.adamw import adamw


def warmup_cosine(x: float, warmup: float = 0.002) -> float:
    """Linear warm-up to 1 over ``x < warmup`` (``x = step / t_total``), then a half
    cosine from 1 down to 0 at ``x = 1``."""
    # The original used "<=" here (unlike the other schedules) and called torch.cos on
    # a Python float, which fails; math.cos gives the intended value. A warm-up of 0
    # (or -1) means none, instead of the original's division by zero.
    if warmup > 0 and x <= warmup:
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


def warmup_constant(x: float, warmup: float = 0.002) -> float:
    """Linear warm-up to 1, then constant 1."""
    if x < warmup:
        return x / warmup
    return 1.0


def warmup_linear(x: float, warmup: float = 0.002) -> float:
    """Linear warm-up to 1, then ``1 - x``.

    The jump at the end of warm-up is the original's: the multiplier rises to almost 1,
    then drops to ``1 - warmup`` (0.9 for a warm-up of 0.1). It turns negative if
    training runs past ``t_total``.
    """
    if x < warmup:
        return x / warmup
    return 1.0 - x


def constant(x: float, warmup: float = 0.002) -> float:
    """No schedule: always 1."""
    return 1.0


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "warmup_cosine": warmup_cosine,
    "warmup_constant": warmup_constant,
    "warmup_linear": warmup_linear,
    "none": constant,
}


def _validate_options(options: dict[str, Any]) -> None:
    """Raise ValueError for a bad group option (``not x >= 0`` also rejects NaN)."""
    lr, warmup, t_total = options["lr"], options["warmup"], options["t_total"]
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr} - should be >= 0.0")
    if options["schedule"] not in SCHEDULES:
        raise ValueError(
            f"Invalid schedule parameter: {options['schedule']!r} - should be one of "
            f"{sorted(SCHEDULES)}"
        )
    if not (0.0 <= warmup < 1.0 or warmup == -1):
        raise ValueError(f"Invalid warmup: {warmup} - should be in [0.0, 1.0[ or -1")
    if not (t_total > 0 or t_total == -1):
        raise ValueError(f"Invalid t_total: {t_total} - should be > 0 or -1")
    for name in ("b1", "b2"):
        if not 0.0 <= options[name] < 1.0:
            raise ValueError(f"Invalid {name} parameter: {options[name]} - should be in [0.0, 1.0[")
    if not options["e"] >= 0.0:
        raise ValueError(f"Invalid epsilon value: {options['e']} - should be >= 0.0")
    if not options["weight_decay_rate"] >= 0.0:
        raise ValueError(
            f"Invalid weight_decay_rate: {options['weight_decay_rate']} - should be >= 0.0"
        )


# A step count at which AdamW's bias corrections 1 - b**step are exactly 1 (see _fused_update).
_NO_BIAS_CORRECTION_STEP = 2.0 ** 30
_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class BERTAdam(Optimizer):
    """Adam as BERT was trained with it.

    Unlike ``torch.optim.AdamW``, and on purpose, to reproduce BERT's results: each
    tensor's gradient is clipped on its own (not the global norm), the moments get no
    bias correction, epsilon is added outside the square root, and the learning rate
    follows a schedule of each parameter's own step counter.

    Args:
        params: parameters, or dicts of parameter groups; a group may override any
            option below (run_multi_task sets ``weight_decay_rate`` 0 for biases and
            LayerNorm parameters).
        lr: base learning rate.
        warmup: fraction of ``t_total`` spent warming up, in [0, 1), or -1 for none.
        t_total: total number of steps, or -1 for a constant learning rate.
        schedule: a name in ``SCHEDULES``.
        b1, b2: decay rates of the first and second moments.
        e: epsilon, added to ``sqrt(v)``.
        weight_decay_rate: decoupled weight decay, added to the update.
        max_grad_norm: each tensor's gradient is clipped in place (``p.grad``) to this
            norm, as ``clip_grad_norm_`` on that one tensor; 0 or less: no clipping.
        zero_grad_updates: the original's treatment of a parameter that gets no gradient
            in a step. PyTorch 0.4-1.x's ``zero_grad()`` zeroed gradients in place, so
            once a parameter had a gradient it was updated at every later step (its
            moments decayed, weight decay shrank it, its step counter advanced). With
            this flag, a parameter that has optimizer state and a None gradient is
            updated with a zero gradient. One that never had a gradient is skipped.
        bias_correction: divide the moments by ``1 - b1^t`` and ``1 - b2^t`` (``t`` the
            parameter's own step count, from 1), as Adam and AdamW do. Off in BERT's rule
            (the default here): early updates are then up to ~7x larger than the learning
            rate says (m/sqrt(v) starts at (1 - b1) / sqrt(1 - b2) = 3.2 and peaks near
            step 10), which on small tasks can push a run into predicting one class
            (Mosbach et al. 2021, Zhang et al. 2021). run_multi_task.py turns it on by
            default and off under --replicate_original.
        fused: False: the plain update (``_update``), the reference. True: PyTorch's
            fused AdamW kernel through the public ``torch.optim.adamw.adamw``, with bias
            correction cancelled (see ``_fused_update``); an error where it does not
            apply. None (default): fused where it applies (floating-point parameters on
            CPU or CUDA), plain elsewhere. The fused kernel computes the same formula in
            one pass but in another order, so it rounds differently: weight decay first
            as ``p * (1 - lr * wd)``, the moments as a lerp, intermediates in float32 for
            half-precision parameters. In fp32 the two paths stay within 2e-6 relative
            over several steps (tests/test_optimization.py). A MiniLM step: 35 ms, not 130.

    State per parameter, the original's names: ``step`` (int), ``next_m``, ``next_v``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        warmup: float = -1,
        t_total: int = -1,
        schedule: str = "warmup_linear",
        b1: float = 0.9,
        b2: float = 0.999,
        e: float = 1e-6,
        weight_decay_rate: float = 0.01,
        max_grad_norm: float = 1.0,
        zero_grad_updates: bool = False,
        bias_correction: bool = False,
        fused: bool | None = None,
    ) -> None:
        if fused not in (None, True, False):
            raise ValueError(f"Invalid fused: {fused!r} - should be None, True or False")
        self.fused = fused
        defaults = dict(lr=lr, schedule=schedule, warmup=warmup, t_total=t_total, b1=b1, b2=b2, e=e,
                        weight_decay_rate=weight_decay_rate, max_grad_norm=max_grad_norm,
                        zero_grad_updates=zero_grad_updates, bias_correction=bias_correction)
        _validate_options(defaults)  # even if every group overrides them
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group after validating its options."""
        _validate_options({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, and a state written before ``bias_correction`` existed keeps the rule
        it was written under: none."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.setdefault("bias_correction", False)

    @staticmethod
    def _scheduled_lr(group: dict[str, Any], step: int) -> float:
        """``lr * schedule(step / t_total, warmup)``, or ``lr`` when ``t_total`` is -1."""
        if group["t_total"] == -1:
            return group["lr"]
        return group["lr"] * SCHEDULES[group["schedule"]](step / group["t_total"], group["warmup"])

    def get_lr(self, groups: Sequence[dict[str, Any]] | None = None) -> list[float]:
        """The scheduled learning rate of every parameter with state, in group order, at
        its current step counter; ``[0]`` before any update. (The original returned
        ``[0]`` as soon as it met a parameter without state, e.g. a frozen one.)
        ``groups``: only these parameter groups (default all)."""
        lrs = [self._scheduled_lr(group, self.state[p]["step"])
               for group in (self.param_groups if groups is None else groups)
               for p in group["params"] if self.state[p]]
        return lrs or [0]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient (or, under
        ``zero_grad_updates``, had one before); returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            updates = []
            for p in group["params"]:
                state = self.state[p]
                if p.grad is None and not (group["zero_grad_updates"] and state):
                    continue
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError("BERTAdam does not support sparse gradients, please consider "
                                       "SparseAdam instead")
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["next_v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if p.grad is not None and group["max_grad_norm"] > 0:
                    clip_grad_norm_(p, group["max_grad_norm"])  # this tensor alone, in place
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                updates.append((p, grad, state))
            if self._runs_fused(group, updates):
                self._fused_update(group, updates)
            else:
                for p, grad, state in updates:
                    self._update(group, p, grad, state)
        return loss

    def _update(self, group: dict[str, Any], p: torch.Tensor, grad: torch.Tensor,
                state: dict[str, Any]) -> None:
        """The plain update of one parameter, as google-research/bert's optimization.py
        (``grad`` already clipped)."""
        b1, b2 = group["b1"], group["b2"]
        next_m, next_v = state["next_m"], state["next_v"]
        next_m.mul_(b1).add_(grad, alpha=1 - b1)
        next_v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        if group["bias_correction"]:  # Adam's: the moments as averages from the first step on
            t = state["step"] + 1
            update = (next_m / (1 - b1 ** t)) / ((next_v / (1 - b2 ** t)).sqrt() + group["e"])
        else:  # as BERT was trained: no bias correction; e outside the sqrt either way
            update = next_m / (next_v.sqrt() + group["e"])
        if group["weight_decay_rate"] > 0.0:
            update += group["weight_decay_rate"] * p
        # The counter before incrementing: every parameter's first update is at progress 0.
        lr_scheduled = self._scheduled_lr(group, state["step"])
        p.sub_(lr_scheduled * update)
        state["step"] += 1

    def _runs_fused(self, group: dict[str, Any], updates: list) -> bool:
        """Whether this group's updates go through the fused kernel (see ``fused``)."""
        if self.fused is False or not updates:
            return False
        supported = all(1.0 - group[b] ** _NO_BIAS_CORRECTION_STEP == 1.0 for b in ("b1", "b2")) and all(
            p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES
            for p, _, _ in updates)
        if self.fused and not supported:
            raise RuntimeError("BERTAdam(fused=True): the fused kernel needs floating-point parameters "
                               "on CPU or CUDA, and b1, b2 < 1 - 4e-8")
        return supported

    def _fused_update(self, group: dict[str, Any], updates: list) -> None:
        """``_update`` for a whole group, by PyTorch's fused AdamW kernel.

        Exact because that kernel computes, with ``step`` the count it is given,
            p = p (1 - lr wd) - lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + e)
        and with step 2^30 and b < 1 - 4e-8, b^step < 2^-54, so 1 - b^step rounds to
        exactly 1 in float64: both bias corrections are 1, and this is BERTAdam's
        ``p - lr (m / (sqrt(v) + e) + wd p)``. (``adamw`` first adds 1 to each count,
        which 2^30 absorbs in float32.) With ``bias_correction`` the count is the
        parameter's own step (``adamw`` adds the 1), and the kernel's formula is the plain
        update's. The learning rate follows each parameter's own counter, hence one call
        per counter value (almost always one).
        """
        by_step: dict[tuple[int, torch.device], list] = {}
        for p, grad, state in updates:
            by_step.setdefault((state["step"], p.device), []).append((p, grad, state))
        for (step, device), items in by_step.items():
            # One count tensor per parameter: the kernel adds 1 to each in place.
            count = float(step) if group["bias_correction"] else _NO_BIAS_CORRECTION_STEP
            counts = [torch.full((), count, dtype=torch.float32, device=device) for _ in items]
            adamw([p for p, _, _ in items], [grad for _, grad, _ in items],
                  [state["next_m"] for _, _, state in items], [state["next_v"] for _, _, state in items],
                  [], counts, fused=True, amsgrad=False, beta1=group["b1"],
                  beta2=group["b2"], lr=self._scheduled_lr(group, step),
                  weight_decay=group["weight_decay_rate"], eps=group["e"], maximize=False)
            for _, _, state in items:
                state["step"] += 1


# The name used by later versions of the Hugging Face port.
BertAdam = BERTAdam
