"""Tests for optimization.py (BERTAdam and its schedules).

The central test replays a short trajectory computed independently (tests/references.py), with NumPy
float64 arithmetic straight from the formulas (no code shared with optimization.py):
per-tensor clipping, no bias correction, epsilon outside the square root, decoupled
weight decay, warmup_linear with its jump, per-parameter step counters with learning
rate 0 at each parameter's first update, and the zero_grad_updates semantics. Both
update paths (plain and fused) must follow it.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from references import bertadam_trajectory

import optimization
from optimization import SCHEDULES, BERTAdam, BertAdam

B1, B2, EPS, MAX_NORM = 0.9, 0.999, 1e-6, 1.0
LR, WARMUP, T_TOTAL, N_STEPS = 0.1, 0.5, 8, 6
DECAY = 0.01


def reference_trajectory(initial, grads, decay, zero_grad_updates):
    """BERTAdam replayed by hand in float64 (tests/references.py) over this file's scenario."""
    return bertadam_trajectory(initial, grads, decay, lr=LR, warmup=WARMUP, t_total=T_TOTAL, steps=N_STEPS,
                               zero_grad_updates=zero_grad_updates, b1=B1, b2=B2, eps=EPS, max_norm=MAX_NORM)


# ---------------------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------------------


def scenario():
    """Initial values, per-step gradients and decay rates for four parameters.

    * ``w`` (decay 0.01): gradient norm well above 1 at every step, so it is clipped;
    * ``b`` (decay 0.0): small gradient, never clipped;
    * ``z`` (decay 0.01): an explicit all-zero gradient at steps 1 and 3;
    * ``n`` (decay 0.01): gradient None at steps 0, 1, 3 and 4, so it starts late
      and then misses steps (a task-specific parameter of an unsampled task).

    Returns:
        (initial, grads, decay) as taken by ``reference_trajectory``.
    """
    initial = {
        "w": np.array([[0.5, -0.3, 0.8], [0.1, 0.9, -0.7]]),
        "b": np.array([0.05, -0.02, 0.3]),
        "z": np.array([1.5, -2.0]),
        "n": np.array([[0.4, -0.6], [0.2, 0.7]]),
    }
    grads = {
        "w": [np.arange(6.0).reshape(2, 3) * 0.4 - 1.0 + 0.15 * k for k in range(N_STEPS)],
        "b": [0.01 * (k + 1) * np.array([1.0, -2.0, 3.0]) for k in range(N_STEPS)],
        "z": [np.zeros(2) if k in (1, 3) else np.array([0.2, -0.1 * k]) for k in range(N_STEPS)],
        "n": [None if k in (0, 1, 3, 4) else np.array([[0.3, -0.2], [0.1, 0.05 * k]])
              for k in range(N_STEPS)],
    }
    decay = {"w": DECAY, "b": 0.0, "z": DECAY, "n": DECAY}
    return initial, grads, decay


def make_parameters(initial, dtype=torch.float64):
    return {name: torch.nn.Parameter(torch.tensor(value, dtype=dtype))
            for name, value in initial.items()}


def make_optimizer(params, decay, **options):
    """Two groups, as run_multi_task builds them: decayed and not decayed."""
    groups = [
        {"params": [p for name, p in params.items() if decay[name] > 0]},
        {"params": [p for name, p in params.items() if decay[name] == 0], "weight_decay_rate": 0.0},
    ]
    defaults = dict(lr=LR, warmup=WARMUP, t_total=T_TOTAL, weight_decay_rate=DECAY)
    defaults.update(options)
    return BERTAdam(groups, **defaults)


def set_grads(params, grads, k, dtype=torch.float64):
    """Give every parameter its gradient for step ``k`` (None stays None)."""
    for name, p in params.items():
        g = grads[name][k]
        p.grad = None if g is None else torch.tensor(g, dtype=dtype)


def run(params, optimizer, grads, steps, dtype=torch.float64):
    """Run optimizer steps ``steps`` (an iterable of step indices); return snapshots."""
    history = []
    for k in steps:
        set_grads(params, grads, k, dtype)
        optimizer.step()
        history.append({name: p.detach().clone() for name, p in params.items()})
    return history


# ---------------------------------------------------------------------------------------
# Trajectory
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("zero_grad_updates", [False, True])
def test_trajectory_matches_hand_computation(zero_grad_updates, fused):
    """In float64 the fused kernel's rounding differences are ~1e-16: at 1e-12 this
    checks that its bias correction is exactly cancelled."""
    initial, grads, decay = scenario()
    params = make_parameters(initial)
    optimizer = make_optimizer(params, decay, zero_grad_updates=zero_grad_updates, fused=fused)
    history = run(params, optimizer, grads, range(N_STEPS))
    expected, expected_steps = reference_trajectory(initial, grads, decay, zero_grad_updates)
    for k in range(N_STEPS):
        for name in initial:
            np.testing.assert_allclose(
                history[k][name].numpy(), expected[k][name], rtol=1e-12, atol=1e-15,
                err_msg=f"parameter {name} after step {k}",
            )
    assert {name: optimizer.state[p]["step"] for name, p in params.items()} == expected_steps


def test_trajectory_properties():
    """The behaviours the hand computation encodes, checked directly."""
    initial, grads, decay = scenario()
    results = {}
    for flag in (False, True):
        params = make_parameters(initial)
        optimizer = make_optimizer(params, decay, zero_grad_updates=flag)
        results[flag] = (params, optimizer, run(params, optimizer, grads, range(N_STEPS)))
    params, optimizer, history = results[False]

    # First update of every parameter has learning rate 0, but the moments move.
    for name in ("w", "b", "z"):
        assert torch.equal(history[0][name], torch.tensor(initial[name]))
        assert optimizer.state[params[name]]["next_m"].abs().sum() > 0
    assert torch.equal(history[2]["n"], torch.tensor(initial["n"]))  # n's first update

    # The clipped gradient is left in p.grad, as clip_grad_norm_ works in place.
    assert np.linalg.norm(grads["w"][-1]) > 1.5
    assert torch.linalg.vector_norm(params["w"].grad).item() == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(params["b"].grad, torch.tensor(grads["b"][-1]))

    # An explicit zero gradient still updates (momentum and weight decay).
    assert not torch.equal(history[3]["z"], history[2]["z"])

    # Per-parameter counters: n was stepped only when it had a gradient (steps 2, 5)
    # without the flag; with it, at every step from its first use on (2, 3, 4, 5).
    assert optimizer.state[params["n"]]["step"] == 2
    params_zero, optimizer_zero, history_zero = results[True]
    assert optimizer_zero.state[params_zero["n"]]["step"] == 4
    assert torch.equal(history[3]["n"], history[2]["n"])
    assert not torch.equal(history_zero[3]["n"], history_zero[2]["n"])
    # The flag changes nothing for parameters that always have a gradient.
    for name in ("w", "b", "z"):
        assert torch.equal(history[-1][name], history_zero[-1][name])
    assert set(optimizer.state[params["w"]]) == {"step", "next_m", "next_v"}


def test_zero_grad_updates_equals_explicit_zero_gradients():
    """A None gradient under zero_grad_updates behaves exactly like a zero tensor
    (what zero_grad() left behind in PyTorch 0.4-1.x)."""
    initial, grads, decay = scenario()
    zero_filled = dict(grads)
    first_use = 2
    zero_filled["n"] = [g if g is not None or k < first_use else np.zeros((2, 2))
                        for k, g in enumerate(grads["n"])]
    runs = []
    for flag, gradients in ((True, grads), (False, zero_filled)):
        params = make_parameters(initial)
        optimizer = make_optimizer(params, decay, zero_grad_updates=flag)
        runs.append(run(params, optimizer, gradients, range(N_STEPS)))
    for name in initial:
        assert torch.equal(runs[0][-1][name], runs[1][-1][name])


def test_float32_parameters_follow_the_float64_reference():
    initial, grads, decay = scenario()
    params = make_parameters(initial, dtype=torch.float32)
    optimizer = make_optimizer(params, decay, zero_grad_updates=True)
    history = run(params, optimizer, grads, range(N_STEPS), dtype=torch.float32)
    expected, _ = reference_trajectory(initial, grads, decay, zero_grad_updates=True)
    for name in initial:
        np.testing.assert_allclose(
            history[-1][name].numpy(), expected[-1][name], rtol=1e-5, atol=1e-6
        )
        assert history[-1][name].dtype == torch.float32
        assert optimizer.state[params[name]]["next_v"].dtype == torch.float32


def test_max_grad_norm_zero_disables_clipping():
    initial, grads, decay = scenario()
    params = make_parameters(initial)
    optimizer = make_optimizer(params, decay, max_grad_norm=0.0)
    set_grads(params, grads, 0)
    optimizer.step()
    assert torch.equal(params["w"].grad, torch.tensor(grads["w"][0]))


# ---------------------------------------------------------------------------------------
# Schedules and learning rates
# ---------------------------------------------------------------------------------------


def test_schedule_registry():
    assert set(SCHEDULES) == {"warmup_linear", "warmup_constant", "warmup_cosine", "none"}


@pytest.mark.parametrize("x", [0.0, 0.05, 0.0999, 0.1, 0.5, 0.9, 1.0, 1.2])
def test_schedule_values(x):
    w = 0.1
    warm = x / w
    assert SCHEDULES["warmup_linear"](x, w) == pytest.approx(warm if x < w else 1.0 - x)
    assert SCHEDULES["warmup_constant"](x, w) == pytest.approx(warm if x < w else 1.0)
    # Cosine keeps the original's "<=": at the boundary it is still warm-up (1.0).
    expected_cosine = warm if x <= w else 0.5 * (1.0 + math.cos(math.pi * x))
    assert SCHEDULES["warmup_cosine"](x, w) == pytest.approx(expected_cosine)
    assert SCHEDULES["none"](x, w) == 1.0


def test_warmup_linear_jump_and_negative_tail():
    schedule = SCHEDULES["warmup_linear"]
    assert schedule(0.0999, 0.1) == pytest.approx(0.999)
    assert schedule(0.1, 0.1) == pytest.approx(0.9)  # drops at the boundary
    assert schedule(1.2, 0.1) == pytest.approx(-0.2)  # past t_total: negative
    assert schedule(0.3, -1) == pytest.approx(0.7)  # warmup -1: no warm-up


def test_cosine_without_warmup_does_not_divide_by_zero():
    assert SCHEDULES["warmup_cosine"](0.0, 0.0) == 1.0
    assert SCHEDULES["warmup_cosine"](0.5, -1) == pytest.approx(0.5)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_each_schedule_drives_the_optimizer(schedule):
    """Every schedule runs inside step(), and get_lr reports lr * schedule(step/t_total)."""
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = BERTAdam([p], lr=0.01, warmup=0.2, t_total=10, schedule=schedule)
    assert optimizer.get_lr() == [0]
    for k in range(1, 8):
        before = p.detach().clone()
        p.grad = torch.full((3,), 0.5, dtype=torch.float64)
        optimizer.step()
        expected_lr_used = 0.01 * SCHEDULES[schedule]((k - 1) / 10, 0.2)
        moved = not torch.equal(p.detach(), before)
        assert moved == (expected_lr_used != 0.0)
        assert optimizer.get_lr() == [pytest.approx(0.01 * SCHEDULES[schedule](k / 10, 0.2))]


def test_constant_learning_rate_without_t_total():
    p = torch.nn.Parameter(torch.ones(2))
    optimizer = BERTAdam([p], lr=0.05)  # t_total -1: no schedule, no warm-up
    p.grad = torch.ones(2)
    optimizer.step()
    assert optimizer.get_lr() == [0.05]
    assert (p.detach() < 1.0).all()  # the first step already moved it


def test_get_lr_per_parameter_and_skips_parameters_never_updated():
    used = torch.nn.Parameter(torch.ones(2))
    late = torch.nn.Parameter(torch.ones(2))
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    optimizer = BERTAdam([used, late, frozen], lr=1.0, warmup=0.5, t_total=4)
    used.grad = torch.ones(2)
    optimizer.step()
    optimizer.step()
    late.grad = torch.ones(2)
    used.grad = torch.ones(2)
    optimizer.step()
    # used: counter 3 -> x 0.75 -> 0.25; late: counter 1 -> x 0.25 -> 0.5.
    assert optimizer.get_lr() == [pytest.approx(1 - 3 / 4), pytest.approx((1 / 4) / 0.5)]


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lr": -1.0}, "Invalid learning rate"),
        ({"lr": float("nan")}, "Invalid learning rate"),
        ({"schedule": "warmup_exponential"}, "Invalid schedule"),
        ({"warmup": 1.0}, "Invalid warmup"),
        ({"warmup": -0.5}, "Invalid warmup"),
        ({"t_total": 0}, "Invalid t_total"),
        ({"b1": 1.0}, "Invalid b1"),
        ({"b2": -0.1}, "Invalid b2"),
        ({"e": -1e-6}, "Invalid epsilon"),
        ({"weight_decay_rate": -0.01}, "Invalid weight_decay_rate"),
    ],
)
def test_invalid_arguments(options, message):
    p = torch.nn.Parameter(torch.ones(1))
    kwargs = {"lr": 0.1, **options}
    with pytest.raises(ValueError, match=message):
        BERTAdam([p], **kwargs)
    # The same value given as a per-group override is caught too.
    if "lr" not in options:
        with pytest.raises(ValueError, match=message):
            BERTAdam([{"params": [p], **options}], lr=0.1)


def test_sparse_gradients_are_rejected():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        BERTAdam([p], lr=0.1).step()


def test_alias_and_closure():
    assert BertAdam is BERTAdam and optimization.BertAdam is BERTAdam
    p = torch.nn.Parameter(torch.tensor([2.0]))
    optimizer = BERTAdam([p], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 4.0
    assert p.item() < 2.0


# ---------------------------------------------------------------------------------------
# Resume and training loop
# ---------------------------------------------------------------------------------------


def test_state_dict_round_trip_continues_bit_for_bit():
    initial, grads, decay = scenario()
    cut = 3

    params = make_parameters(initial, dtype=torch.float32)
    optimizer = make_optimizer(params, decay, zero_grad_updates=True)
    uninterrupted = run(params, optimizer, grads, range(N_STEPS), torch.float32)

    params = make_parameters(initial, dtype=torch.float32)
    optimizer = make_optimizer(params, decay, zero_grad_updates=True)
    run(params, optimizer, grads, range(cut), torch.float32)
    buffer = io.BytesIO()
    torch.save({"params": {n: p.detach() for n, p in params.items()},
                "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    # weights_only: the state dict holds only tensors, numbers, strings and bools.
    checkpoint = torch.load(buffer, weights_only=True)

    resumed_params = make_parameters(initial, dtype=torch.float32)
    with torch.no_grad():
        for name, p in resumed_params.items():
            p.copy_(checkpoint["params"][name])
    resumed_optimizer = make_optimizer(resumed_params, decay, zero_grad_updates=True)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    # The counters are plain ints and survive the trip; n missed step 0 and 1.
    assert resumed_optimizer.state[resumed_params["n"]]["step"] == 1
    resumed = run(resumed_params, resumed_optimizer, grads, range(cut, N_STEPS), torch.float32)

    for k in range(N_STEPS - cut):
        for name in initial:
            assert torch.equal(resumed[k][name], uninterrupted[cut + k][name]), (name, k)


def test_scheduler_free_training_loop_fits_a_regression():
    """A plain loop (zero_grad, backward, step; no LR scheduler) learns y = 3x - 1."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    y = 3 * x - 1
    steps = 300
    no_decay = [p for n, p in model.named_parameters() if "bias" in n]
    decay = [p for n, p in model.named_parameters() if "bias" not in n]
    optimizer = BERTAdam(
        [{"params": decay}, {"params": no_decay, "weight_decay_rate": 0.0}],
        lr=0.1, warmup=0.1, t_total=steps, zero_grad_updates=True,
    )
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0]
    assert model.bias.item() == pytest.approx(-1.0, abs=0.05)


# ---------------------------------------------------------------------------------------
# The fused path against the plain one
# ---------------------------------------------------------------------------------------


def test_fused_update_equals_plain_update():
    """The fused kernel (default) against the plain update, fp32, over 6 steps of a
    warm-up schedule: two groups (decay 0.01 and 0), clipped and unclipped gradients,
    a parameter that starts later (its own step counter, so its own learning rate) and
    unsampled steps under zero_grad_updates. Bound: 2e-6 relative to each parameter's
    largest entry (fp32 rounds every operation at ~6e-8; the two orders round differently)."""
    generator = torch.Generator().manual_seed(2)
    shapes = [(64, 16), (16,), (300,), (8, 8)]
    initial = [torch.randn(s, generator=generator) for s in shapes]
    gradients = [[torch.randn(s, generator=generator) * (3.0 if i % 2 else 0.02) for s in shapes]
                 for i in range(6)]
    results = {}
    for fused in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in initial]
        groups = [{"params": params[:2]}, {"params": params[2:], "weight_decay_rate": 0.0}]
        optimizer = BERTAdam(groups, lr=LR, warmup=WARMUP, t_total=T_TOTAL, weight_decay_rate=DECAY,
                             zero_grad_updates=True, fused=fused)
        for step, grads in enumerate(gradients):
            for index, (p, g) in enumerate(zip(params, grads)):
                late_start = index == 3 and step < 2
                unsampled = index == 1 and step == 4
                p.grad = None if late_start or unsampled else g.clone()
            optimizer.step()
        results[fused] = (params, optimizer)
    for fused_p, plain_p in zip(results[True][0], results[False][0]):
        scale = plain_p.detach().abs().max().item()
        assert (fused_p.detach() - plain_p.detach()).abs().max().item() <= 2e-6 * scale
        fused_state, plain_state = results[True][1].state[fused_p], results[False][1].state[plain_p]
        assert fused_state["step"] == plain_state["step"]
        for key in ("next_m", "next_v"):
            assert torch.allclose(fused_state[key], plain_state[key], rtol=1e-5, atol=1e-9)
    assert results[True][1].state[results[True][0][3]]["step"] == 4  # started two steps late


def test_fused_option_is_checked():
    parameter = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="fused"):
        BERTAdam([parameter], lr=0.1, fused="yes")
    optimizer = BERTAdam([parameter], lr=0.1, fused=True)
    parameter.grad = torch.ones(2)
    optimizer.step()
    assert optimizer.state[parameter]["step"] == 1


def test_betas_too_close_to_one_fall_back_to_the_plain_update():
    """The fused kernel cancels bias correction only for b < 1 - 4e-8 (b^(2^30) must
    round to 0): closer to 1, fused=None runs the plain update and fused=True refuses.
    Elsewhere fused=None is the fused kernel."""
    def trajectory(fused, b2):
        generator = torch.Generator().manual_seed(3)
        p = torch.nn.Parameter(torch.randn(40, generator=generator))
        optimizer = BERTAdam([p], lr=LR, b2=b2, fused=fused)
        for _ in range(3):
            p.grad = torch.randn(40, generator=generator)
            optimizer.step()
        return p.detach()

    close_to_one = 1 - 1e-9
    assert torch.equal(trajectory(None, close_to_one), trajectory(False, close_to_one))
    with pytest.raises(RuntimeError, match="fused"):
        trajectory(True, close_to_one)
    assert torch.equal(trajectory(None, B2), trajectory(True, B2))


# ---------------------------------------------------------------------------------------
# Checkpoints written by earlier versions
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_loads_a_state_dict_in_the_earlier_layout(fused):
    """A state dict exactly as the earlier optimization.py wrote it (state keys 'step',
    'next_m', 'next_v'; these group options) loads and continues by the formulas."""
    m = np.array([0.02, -0.01, 0.005])
    v = np.array([4e-4, 1e-4, 2.5e-5])
    saved = {
        "state": {0: {"step": 2, "next_m": torch.tensor(m), "next_v": torch.tensor(v)}},
        "param_groups": [{"lr": LR, "schedule": "warmup_linear", "warmup": WARMUP, "t_total": T_TOTAL,
                          "b1": B1, "b2": B2, "e": EPS, "weight_decay_rate": DECAY, "max_grad_norm": MAX_NORM,
                          "zero_grad_updates": True, "params": [0]}],
    }
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    p0, g = np.array([0.5, -0.25, 1.0]), np.array([3.0, 0.0, -4.0])  # norm 5: clipped to 1
    p = torch.nn.Parameter(torch.tensor(p0))
    optimizer = BERTAdam([p], lr=1.0, fused=fused)
    optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    assert optimizer.get_lr() == [pytest.approx(LR * (2 / T_TOTAL) / WARMUP)]
    p.grad = torch.tensor(g)
    optimizer.step()

    g = g * MAX_NORM / (5.0 + 1e-6)
    m, v = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g * g
    expected = p0 - LR * (2 / T_TOTAL) / WARMUP * (m / (np.sqrt(v) + EPS) + DECAY * p0)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(optimizer.state[p]["next_m"].numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(optimizer.state[p]["next_v"].numpy(), v, rtol=1e-12)
    assert optimizer.state[p]["step"] == 3
    p.grad = None  # zero_grad_updates came from the saved group: a zero-gradient update
    optimizer.step()
    assert optimizer.state[p]["step"] == 4


@pytest.mark.parametrize("fused", [False, True])
def test_bias_correction_is_torch_adamw(fused):
    """With bias correction, no clipping and a constant learning rate, BERTAdam is
    AdamW (epsilon outside the square root of the corrected v, as AdamW's)."""
    torch.manual_seed(0)
    ours = [torch.randn(7, 5), torch.randn(5)]
    theirs = [p.clone() for p in ours]
    mine = BERTAdam(ours, lr=0.01, bias_correction=True, max_grad_norm=0.0, weight_decay_rate=0.01,
                    fused=fused)
    adamw = torch.optim.AdamW(theirs, lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        mine.step()
        adamw.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_bias_correction_first_update_is_the_learning_rate():
    """Adam's first step moves each element by lr * sign(g) (|m_hat| = sqrt(v_hat) = |g|);
    BERT's rule moves it by lr * (1 - b1) / sqrt(1 - b2) = 3.16 lr."""
    for corrected, factor in ((True, 1.0), (False, 0.1 / math.sqrt(0.001))):
        p = torch.zeros(4, dtype=torch.float64)
        optimizer = BERTAdam([p], lr=1e-3, e=0.0, weight_decay_rate=0.0, bias_correction=corrected)
        p.grad = torch.tensor([0.5, -2.0, 3.0, -1e-3], dtype=torch.float64)
        optimizer.step()
        torch.testing.assert_close(p, -1e-3 * factor * torch.sign(p.grad))
