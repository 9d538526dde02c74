"""References written out independently of the code they check, shared by the tests and
by benchmarks/gpu_check.py (which runs them on a GPU machine's own Python: so this module
imports only NumPy, never pytest nor the project).

``bertadam_trajectory``: BERTAdam replayed by hand in float64 from its specification.
``relative_gradient_error``: how far one set of gradients is from another, per tensor.
"""
from __future__ import annotations

import math

import numpy as np


def warmup_linear(x: float, warmup: float) -> float:
    """The original schedule, written from the specification (a jump at ``warmup``)."""
    return x / warmup if x < warmup else 1.0 - x


def bertadam_trajectory(initial, grads, decay, *, lr, warmup, t_total, steps, zero_grad_updates=False,
                        b1=0.9, b2=0.999, eps=1e-6, max_norm=1.0):
    """Replay BERTAdam by hand in float64: per-tensor clipping to ``max_norm``, no bias
    correction, epsilon outside the square root, decoupled weight decay, warmup_linear on
    each parameter's own step counter (learning rate 0 at its first update).

    Args:
        initial: dict name -> initial parameter array (iteration order = update order).
        grads: dict name -> list (one per step) of gradient arrays or None.
        decay: dict name -> weight decay rate.
        steps: how many steps to replay.
        zero_grad_updates: treat a None gradient as zeros once the parameter has state.

    Returns:
        List (one per step) of dicts name -> parameter array after that step, and the
        final per-parameter step counters.
    """
    params = {name: np.array(value, dtype=np.float64) for name, value in initial.items()}
    m, v, counters = {}, {}, {}
    history = []
    for k in range(steps):
        for name in initial:
            g = grads[name][k]
            if g is None:
                if not (zero_grad_updates and name in counters):
                    continue
                g = np.zeros_like(params[name])
            g = np.asarray(g, dtype=np.float64)
            if name not in counters:
                m[name], v[name], counters[name] = np.zeros_like(g), np.zeros_like(g), 0
            norm = math.sqrt(float(np.sum(g * g)))
            coef = max_norm / (norm + 1e-6)
            if coef < 1.0:
                g = g * coef
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g * g
            update = m[name] / (np.sqrt(v[name]) + eps) + decay[name] * params[name]
            lr_t = lr * warmup_linear(counters[name] / t_total, warmup)
            params[name] = params[name] - lr_t * update
            counters[name] += 1
        history.append({name: value.copy() for name, value in params.items()})
    return history, counters


def relative_gradient_error(got: dict, want: dict, near_zero: float = 0.01) -> float:
    """The largest per-tensor ||got - want|| / ||want|| over two {name: gradient} dicts
    (torch tensors or None). A tensor under ``near_zero`` of the largest norm is compared
    at that scale instead: the attention key biases' true gradient is 0 (softmax ignores
    them) and their own norm is rounding noise. Different names, or a gradient None on
    one side only, are an AssertionError naming it."""
    if got.keys() != want.keys():
        raise AssertionError(f"gradients of different parameters: {sorted(got.keys() ^ want.keys())[:3]}")
    largest = max(g.norm().item() for g in want.values() if g is not None)
    worst = 0.0
    for name, expected in want.items():
        if (got[name] is None) != (expected is None):
            raise AssertionError(f"{name}: a gradient on one side only")
        if expected is not None:
            scale = max(expected.norm().item(), near_zero * largest)
            worst = max(worst, (got[name] - expected).norm().item() / scale)
    return worst
