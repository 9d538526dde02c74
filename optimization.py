"""BERTAdam: the Adam variant BERT was trained with, and its learning-rate schedules.

It differs from ``torch.optim.AdamW`` on purpose, to reproduce the BERT and PALs
results:

* each parameter tensor's gradient is clipped on its own to norm ``max_grad_norm``
  (not the global norm over all parameters);
* no bias correction of the moment estimates;
* epsilon is added outside the square root: ``m / (sqrt(v) + e)``;
* weight decay is decoupled (added to the update, not to the gradient);
* the learning rate follows a schedule of ``step / t_total`` where ``step`` is the
  parameter's own step counter *before* it is incremented, so every parameter's first
  update uses the schedule at 0 (learning rate 0 under warm-up).
"""
import math

import torch
from torch.optim import Optimizer


def warmup_cosine(x, warmup=0.002):
    """Linear warm-up to 1, then a half cosine from 1 down to 0 at ``x = 1``.

    Args:
        x: training progress, ``step / t_total``.
        warmup: fraction of training spent warming up.

    Returns:
        The learning-rate multiplier.
    """
    # The original used "<=" here (unlike the other schedules) and called torch.cos on
    # a Python float, which fails; math.cos gives the intended value. A warm-up of 0
    # (or -1) means none, instead of the original's division by zero.
    if warmup > 0 and x <= warmup:
        return x / warmup
    return 0.5 * (1.0 + math.cos(math.pi * x))


def warmup_constant(x, warmup=0.002):
    """Linear warm-up to 1, then constant 1.

    Args:
        x: training progress, ``step / t_total``.
        warmup: fraction of training spent warming up.

    Returns:
        The learning-rate multiplier.
    """
    if x < warmup:
        return x / warmup
    return 1.0


def warmup_linear(x, warmup=0.002):
    """Linear warm-up to 1, then ``1 - x``.

    Note the jump at the end of warm-up, kept from the original: the multiplier rises
    to almost 1 and then drops to ``1 - warmup`` (e.g. 0.9 for a warm-up of 0.1). It
    turns negative if training runs past ``t_total``.

    Args:
        x: training progress, ``step / t_total``.
        warmup: fraction of training spent warming up.

    Returns:
        The learning-rate multiplier.
    """
    if x < warmup:
        return x / warmup
    return 1.0 - x


def constant(x, warmup=0.002):
    """No schedule: the multiplier is always 1.

    Args:
        x: training progress (ignored).
        warmup: ignored.

    Returns:
        1.0.
    """
    return 1.0


SCHEDULES = {
    "warmup_cosine": warmup_cosine,
    "warmup_constant": warmup_constant,
    "warmup_linear": warmup_linear,
    "none": constant,
}


def _validate_options(options):
    """Check a parameter group's options; raise ValueError with a clear message.

    The ``not x >= 0`` style also rejects NaN.

    Args:
        options: the group's options (defaults merged with any per-group overrides).
    """
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


# PyTorch's fused AdamW kernel (what torch.optim.AdamW(fused=True) calls), if present.
_FUSED_KERNEL = getattr(torch, "_fused_adamw_", None)
_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# b1 ** 2^30 and b2 ** 2^30 are 0 in float64 for any b < 1 - 4e-8: bias corrections of 1.
_NO_BIAS_CORRECTION_STEP = 2.0 ** 30


def _clip_tensor_grad_(grad, max_norm):
    """``clip_grad_norm_`` on one gradient, in place: the same norm and scale factor.

    ``clip_grad_norm_`` always multiplies by ``min(1, max_norm / (norm + 1e-6))``; a
    factor of exactly 1 changes nothing, so on the CPU (where reading the norm costs no
    device synchronisation) that pass over the gradient is skipped.
    """
    norm = torch.linalg.vector_norm(torch.linalg.vector_norm(grad).unsqueeze(0))  # as clip_grad_norm_
    factor = max_norm / (norm + 1e-6)
    if grad.device.type != "cpu":
        grad.mul_(torch.clamp(factor, max=1.0))
    elif factor < 1.0:
        grad.mul_(factor)


class BERTAdam(Optimizer):
    """Adam with BERT's modifications (see the module docstring).

    Args:
        params: iterable of parameters or of dicts defining parameter groups. A group
            may override any option below (run_multi_task sets ``weight_decay_rate``
            to 0 for biases and LayerNorm parameters).
        lr: base learning rate.
        warmup: fraction of ``t_total`` spent warming up, in [0, 1), or -1 for none.
        t_total: total number of optimizer steps, or -1 for a constant learning rate.
        schedule: name of the schedule in ``SCHEDULES``.
        b1: decay rate of the first moment.
        b2: decay rate of the second moment.
        e: epsilon, added to ``sqrt(v)``.
        weight_decay_rate: decoupled weight decay.
        max_grad_norm: each tensor's gradient is clipped to this norm; 0 or less
            turns clipping off. Clipping happens in place on ``p.grad``, as in the
            original (``clip_grad_norm_`` on that one parameter).
        zero_grad_updates: reproduce the original's treatment of parameters that
            received no gradient in a step. In PyTorch 0.4-1.x, ``zero_grad()`` zeroed
            gradients in place, so once a parameter had a gradient it kept a (zero)
            gradient and was updated at every later step: its moments decayed, weight
            decay shrank it and its step counter advanced. Modern PyTorch sets
            gradients to None, which skips the parameter instead. With this flag, a
            parameter that already has optimizer state and whose gradient is None is
            updated as if its gradient were zeros. A parameter that never had a
            gradient (unused so far, or frozen) is still skipped.
        fused: how the update runs. None (default): as one fused kernel per group
            where PyTorch has one for the parameters (CPU and CUDA, floating point):
            PyTorch's AdamW kernel, which computes exactly this formula once bias
            correction is switched off (see ``_fused_update``), in one pass over the
            parameter, gradient and moments instead of about a dozen. False: op by op,
            with the original's order of operations and roundings. The two differ only
            by floating-point rounding (tests/test_optimization.py bounds it). True:
            fused, and an error where no fused kernel applies.

    State per parameter: ``step`` (int), ``next_m`` and ``next_v`` (tensors like the
    parameter), the original's names, so state dicts move between the two.
    """

    def __init__(
        self,
        params,
        lr,
        warmup=-1,
        t_total=-1,
        schedule="warmup_linear",
        b1=0.9,
        b2=0.999,
        e=1e-6,
        weight_decay_rate=0.01,
        max_grad_norm=1.0,
        zero_grad_updates=False,
        fused=None,
    ):
        if fused not in (None, True, False):
            raise ValueError(f"Invalid fused: {fused!r} - should be None, True or False")
        self.fused = fused
        defaults = dict(
            lr=lr,
            schedule=schedule,
            warmup=warmup,
            t_total=t_total,
            b1=b1,
            b2=b2,
            e=e,
            weight_decay_rate=weight_decay_rate,
            max_grad_norm=max_grad_norm,
            zero_grad_updates=zero_grad_updates,
        )
        # Validate the defaults up front, even if every group overrides them.
        _validate_options(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        """Add a parameter group after validating its options.

        Args:
            param_group: dict with "params" and optional option overrides.
        """
        _validate_options({**self.defaults, **param_group})
        super().add_param_group(param_group)

    @staticmethod
    def _scheduled_lr(group, step):
        """Return the learning rate for a parameter at its step counter ``step``.

        Args:
            group: the parameter's group (lr, schedule, warmup, t_total).
            step: the parameter's step counter before this update.

        Returns:
            ``lr * schedule(step / t_total, warmup)``, or ``lr`` if ``t_total`` is -1.
        """
        if group["t_total"] == -1:
            return group["lr"]
        schedule = SCHEDULES[group["schedule"]]
        return group["lr"] * schedule(step / group["t_total"], group["warmup"])

    def get_lr(self):
        """Return the scheduled learning rate of every parameter that has been updated.

        Returns:
            One learning rate per parameter with optimizer state, in group order, at
            its current step counter; ``[0]`` before any update. (The original returned
            ``[0]`` as soon as it met any parameter without state, so a model with
            frozen parameters always reported ``[0]``; those parameters are skipped
            here instead.)
        """
        lrs = [
            self._scheduled_lr(group, self.state[p]["step"])
            for group in self.param_groups
            for p in group["params"]
            if self.state[p]
        ]
        return lrs or [0]

    def _gradient_for_update(self, p, group):
        """Return the gradient to use for ``p`` in this step, or None to skip ``p``.

        Args:
            p: the parameter.
            group: its group (for ``zero_grad_updates``).

        Returns:
            ``p.grad``; zeros if the gradient is None but ``zero_grad_updates`` is on
            and ``p`` has been updated before; None otherwise.
        """
        if p.grad is not None:
            if p.grad.is_sparse:
                raise RuntimeError(
                    "BERTAdam does not support sparse gradients, please consider "
                    "SparseAdam instead"
                )
            return p.grad
        if group["zero_grad_updates"] and self.state[p]:
            return torch.zeros_like(p)
        return None

    def _initialised_state(self, p):
        """``p``'s state, created on its first update: step 0 and zero moments."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["next_m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["next_v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _scratch(self, like, slot):
        """A reusable buffer shaped like ``like`` (two slots per device and dtype).

        The update's two temporaries (the denominator and the weight-decay term) are
        written into buffers kept across steps instead of new tensors: a fresh tensor
        as large as the word embeddings (45 MB at MiniLM size) is new memory that the
        system must fault in and zero at every step. Not part of the state dict.
        """
        buffers = self.__dict__.setdefault("_scratch_buffers", {})
        key = (like.device, like.dtype, slot)
        buffer = buffers.get(key)
        if buffer is None or buffer.numel() < like.numel():
            buffer = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
            buffers[key] = buffer
        return buffer[:like.numel()].view(like.shape)

    def _update_parameter(self, p, grad, group):
        """Apply one BERTAdam update to ``p`` in place.

        Args:
            p: the parameter.
            grad: its gradient (``p.grad`` itself when it exists, so clipping is in
                place on ``p.grad`` as in the original).
            group: the parameter's group options.
        """
        state = self._initialised_state(p)
        next_m, next_v = state["next_m"], state["next_v"]

        if group["max_grad_norm"] > 0 and p.grad is not None:
            # Per-tensor clipping: this one parameter's gradient, not the global norm.
            # (A substituted zero gradient needs none: its norm is 0.)
            _clip_tensor_grad_(p.grad, group["max_grad_norm"])

        b1, b2 = group["b1"], group["b2"]
        next_m.mul_(b1).add_(grad, alpha=1 - b1)
        next_v.mul_(b2).addcmul_(grad, grad, value=1 - b2)

        # No bias correction; epsilon outside the square root. The division writes
        # into the denominator's buffer to avoid a second temporary.
        denominator = torch.sqrt(next_v, out=self._scratch(p, 0)).add_(group["e"])
        update = torch.div(next_m, denominator, out=denominator)
        if group["weight_decay_rate"] > 0.0:
            # Decoupled weight decay: added to the update, never seen by the moments.
            # The product is rounded before the sum, as in the original (add_ with
            # alpha may fuse the two into one rounding).
            update.add_(torch.mul(p, group["weight_decay_rate"], out=self._scratch(p, 1)))

        # The schedule uses the step counter before incrementing: the first update of
        # every parameter happens at progress 0.
        lr_scheduled = self._scheduled_lr(group, state["step"])
        # Scale first, then subtract: the original's two roundings, without a temporary.
        p.sub_(update.mul_(lr_scheduled))
        state["step"] += 1

    @torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            updates = []
            for p in group["params"]:
                grad = self._gradient_for_update(p, group)
                if grad is not None:
                    updates.append((p, grad))
            if self._runs_fused(updates):
                self._fused_update(updates, group)
            else:
                for p, grad in updates:
                    self._update_parameter(p, grad, group)
        return loss

    def _runs_fused(self, updates):
        """Whether this group's updates run as fused kernels (see ``fused``)."""
        if self.fused is False or not updates:
            return False
        supported = _FUSED_KERNEL is not None and all(
            p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES and not p.is_sparse
            for p, _ in updates)
        if self.fused and not supported:
            raise RuntimeError("BERTAdam(fused=True): no fused kernel for these parameters "
                               "(needs torch._fused_adamw_ and float parameters on CPU or CUDA)")
        return supported

    def _fused_update(self, updates, group):
        """The BERTAdam update of ``updates`` by PyTorch's fused AdamW kernel.

        That kernel computes, with ``step`` the counter it is given,
            m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
            p = p (1 - lr wd) - lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + e)
        With a step counter so large that b1^step and b2^step are 0 in float64 (2^30),
        both bias corrections are exactly 1, and this is BERTAdam's
            p = p - lr (m / (sqrt(v) + e) + wd p).
        The per-tensor clipping happens before, as in ``_update_parameter``; the
        scheduled learning rate is per parameter (its own step counter), so parameters
        are grouped by counter, one kernel call per counter value (almost always one).
        """
        by_step = {}
        for p, grad in updates:
            state = self._initialised_state(p)
            if group["max_grad_norm"] > 0 and p.grad is not None:
                _clip_tensor_grad_(p.grad, group["max_grad_norm"])
            by_step.setdefault((state["step"], p.device, p.dtype), []).append((p, grad, state))
        for (step, device, _), items in by_step.items():
            no_bias_correction = torch.full((), _NO_BIAS_CORRECTION_STEP, dtype=torch.float32, device=device)
            _FUSED_KERNEL(
                [p for p, _, _ in items], [grad for _, grad, _ in items],
                [state["next_m"] for _, _, state in items], [state["next_v"] for _, _, state in items],
                [], [no_bias_correction] * len(items),
                lr=self._scheduled_lr(group, step), beta1=group["b1"], beta2=group["b2"],
                weight_decay=group["weight_decay_rate"], eps=group["e"], amsgrad=False, maximize=False)
            for _, _, state in items:
                state["step"] += 1


# The name used by later versions of the Hugging Face port.
BertAdam = BERTAdam
