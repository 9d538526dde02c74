"""GPU check: what the CPU tests cannot show, on one CUDA GPU (`make gpu-check`).

    python3 benchmarks/gpu_check.py [--only NAMES] [--skip NAMES] [--json FILE]

Runs with the machine's own Python as it is: PyTorch 2.x with CUDA, NumPy and, for the
comparison rows, transformers; no .venv, no install, no network, random weights (no
download). It imports this project's modules from the repository root. Within about
five minutes on one GPU it prints one table, one row per check:

  fp16          fp16 autocast with loss scaling through the trainer's step
                (training.Trainer.train_step with --fp16's GradScaler): an overflow
                injected at one step skips exactly that update (parameters and BERTAdam's
                step counters unchanged, loss scale halved); after the other steps the
                parameters are close to an fp32 run that skipped the same steps
  bf16          bf16 autocast: loss and every weight gradient against fp32; two trainer
                steps with --bf16 keep fp32 parameters and finite losses
  adam          fused BERTAdam on the GPU against the float64 reference trajectory
                (the update written out), and against the plain update
  sdpa          the attention (kernels.attention, SDPA on CUDA) against the explicit
                softmax formula in fp32, bf16 and fp16; with dropout: every probability
                kept (scaled by 1 / (1 - p)) or dropped, the drop rate and the expected
                row sums
  parallel      the step's gradient under DataParallel and in a one-process NCCL group
                (DDP) against a single device (with one GPU, DataParallel has one replica)
  train-<size>-<dtype>  the training step (forward, backward, BERTAdam) against
                transformers' BertForSequenceClassification at MiniLM and BERT-base size,
                fp32, bf16 and fp16, batch 32 x 128, dropout 0.1: our time, the faster of
                transformers' SDPA and eager attention, MFU against the GPU's measured
                matmul peak in that dtype, and the peak GPU memory of a step
  memory        peak GPU memory of the whole check

A check that fails or raises prints its reason in its row and the others still run; the
exit status is 1 if any row failed. Without a CUDA GPU (or without PyTorch) it says so in
one line and exits 0, having run nothing. ``--device cpu --tiny`` runs every check on the
CPU at toy sizes: that is how tests/test_gpu_check.py exercises this script; its figures
mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.machinery
import json
import logging
import math
import socket
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    import torch
except ImportError:  # reported by main() in one line
    torch = None

DEFAULT_BUDGET_S = 270.0  # the rows still to run are skipped after this (the whole check: < 5 min)
# fp16 against fp32 after the check's steps: BERTAdam's first updates are nearly
# lr * sign(gradient), so elements whose gradient is near 0 may move opposite ways in the
# two runs; this bounds that drift, relative to how far the fp32 run moved.
FP16_DRIFT_BOUND = 0.5


# --------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
TOY = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)


@dataclass(frozen=True)
class Sizes:
    """How large each check runs."""

    models: dict  # name -> BertConfig fields, for the training-step comparison
    small: dict  # the model of the fp16, bf16 and parallel checks
    batch: int  # training-step comparison: batch x seq
    seq: int
    check_batch: int  # fp16 / bf16 / parallel checks: batch x seq, and trainer steps
    check_seq: int
    check_steps: int
    warmup_steps: int  # training-step comparison: untimed, then timed (median)
    timed_steps: int
    matmul: int  # n of the n x n x n products timing the peak
    attention: tuple  # (batch, heads, length, head size) of the attention check
    dropout_repeats: int
    adam_shapes: tuple
    adam_steps: int


FULL = Sizes(models={"minilm": MINILM, "base": BERT_BASE}, small=MINILM, batch=32, seq=128, check_batch=16,
             check_seq=64, check_steps=10, warmup_steps=3, timed_steps=10, matmul=8192, attention=(8, 12, 128, 64),
             dropout_repeats=20, adam_shapes=((768, 3072), (3072,), (30522, 64), (768,)), adam_steps=20)
TINY = Sizes(models={"toy": TOY}, small=TOY, batch=4, seq=16, check_batch=8, check_seq=16, check_steps=5,
             warmup_steps=1, timed_steps=2, matmul=64, attention=(2, 2, 16, 16), dropout_repeats=4,
             adam_shapes=((16, 8), (8,)), adam_steps=4)


# --------------------------------------------------------------------------------------
# The project's modules, importable with the machine's Python
# --------------------------------------------------------------------------------------

class _NoProgress:
    """Stands in for tqdm where it is not installed (training.py imports it; the checks
    never show a progress bar)."""

    def __init__(self, iterable=None, *args, **kwargs):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable or ())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *args, **kwargs):
        pass

    def set_postfix(self, *args, **kwargs):
        pass


def import_project():
    """modeling, kernels, optimization, training, glue (tqdm stubbed if missing)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        import tqdm  # noqa: F401
    except ImportError:
        stub = types.ModuleType("tqdm")  # a real module with a spec: torch's importers look it up
        stub.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
        stub.tqdm = _NoProgress
        sys.modules["tqdm"] = stub
    import glue
    import kernels
    import modeling
    import optimization
    import training
    return types.SimpleNamespace(glue=glue, kernels=kernels, modeling=modeling, optimization=optimization,
                                 training=training)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------

class CheckFailed(AssertionError):
    """A check ran and its numbers are outside the bound (the message says which)."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class Row:
    name: str
    status: str  # ok, FAIL, error, skipped
    detail: str
    seconds: float = 0.0


@dataclass
class Context:
    """What the checks share: the device, sizes, the project's modules, the matmul peaks."""

    device: object
    sizes: Sizes
    project: object
    peaks: dict = field(default_factory=dict)  # dtype name -> FLOP/s

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def table(rows: Sequence[Row]) -> str:
    header = ("check", "result", "seconds", "figures")
    body = [(r.name, r.status, f"{r.seconds:.1f}", r.detail) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(3)]
    lines = []
    for line in [header, *body]:
        lines.append("  ".join(str(value).ljust(width) for value, width in zip(line[:3], widths)) + "  " + line[3])
        if line is header:
            lines.append("  ".join("-" * width for width in widths) + "  " + "-" * 7)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Helpers: models, data, gradients
# --------------------------------------------------------------------------------------

def bert_config(p, fields: dict, dropout: float = 0.1, **flags):
    return p.modeling.BertConfig(**fields, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **flags)


def random_features(p, vocab_size: int, count: int, seq: int, seed: int, labels: int = 2):
    """Training examples of random tokens and lengths (seq // 2 to seq), random labels."""
    generator = torch.Generator().manual_seed(seed)
    features = []
    for _ in range(count):
        length = int(torch.randint(seq // 2, seq + 1, (1,), generator=generator))
        ids = torch.randint(1, vocab_size, (length,), generator=generator).tolist()
        types_ = [0] * (length // 2) + [1] * (length - length // 2)
        features.append(p.glue.InputFeatures(ids, types_, int(torch.randint(0, labels, (1,), generator=generator))))
    return features


def make_trainer(ctx: Context, config, features, steps: int, lr: float, *, fp16=False, bf16=False,
                 skip_nonfinite=False, train_ctx=None, seed=0):
    """A training.Trainer over one task (the real step: autocast, loss scaling, checks)."""
    p = ctx.project
    torch.manual_seed(seed)
    model = p.modeling.BertForMultiTask(config, [2])
    p.modeling.standard_layer_norm_init(model)
    task = p.training.TaskData(name="sst", task_id=0, train=list(features))
    settings = p.training.TrainingSettings(
        output_dir=Path(tempfile.gettempdir()), vocab_file="", train_batch_size=ctx.sizes.check_batch,
        eval_batch_size=ctx.sizes.check_batch, gradient_accumulation_steps=1, num_train_epochs=1,
        steps_per_epoch=steps, learning_rate=lr, warmup_proportion=0.0, sample="rr", seed=seed,
        max_seq_length=ctx.sizes.check_seq, bf16=bf16, fp16=fp16, skip_nonfinite_loss=skip_nonfinite,
        save_adapters=False, plot=False)
    device_ctx = train_ctx or p.training.DistributedContext(device=ctx.device, n_gpu=1 if ctx.cuda else 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available")
        trainer = p.training.Trainer(model, [task], settings, device_ctx)
    if fp16 and not ctx.cuda:  # the trainer's scaler is CUDA's; on the CPU (self-test) use the CPU's
        trainer.scaler = torch.amp.GradScaler("cpu")
    trainer.wrapped.train()
    return trainer


@contextlib.contextmanager
def gradients_at_optimizer(p, model, record: list):
    """Record {name: gradient} each time BERTAdam.step is entered (before its clipping)."""
    original = p.optimization.BERTAdam.step
    names = {id(param): name for name, param in model.named_parameters()}

    def step(self, closure=None):
        record.append({names[id(q)]: None if q.grad is None else q.grad.detach().float().cpu().clone()
                       for group in self.param_groups for q in group["params"] if id(q) in names})
        return original(self, closure)

    p.optimization.BERTAdam.step = step
    try:
        yield record
    finally:
        p.optimization.BERTAdam.step = original


def gradient_error(got: dict, want: dict, near_zero: float = 0.01) -> float:
    """Largest per-tensor ||got - want|| / ||want|| (tensors under 1% of the largest norm
    compared at that 1%; e.g. attention key biases, whose true gradient is 0)."""
    largest = max(g.norm().item() for g in want.values() if g is not None)
    worst = 0.0
    for name, expected in want.items():
        if (got.get(name) is None) != (expected is None):
            return math.inf
        if expected is not None:
            worst = max(worst, (got[name] - expected).norm().item() / max(expected.norm().item(), near_zero * largest))
    return worst


def parameter_vector(model) -> torch.Tensor:
    return torch.cat([q.detach().float().flatten().cpu() for q in model.parameters()])


def step_counters(optimizers) -> list[int]:
    return [int(state["step"]) for optimizer in optimizers for state in optimizer.state.values() if state]


# --------------------------------------------------------------------------------------
# The checks: each takes the context and returns the figures for its row
# --------------------------------------------------------------------------------------

def check_fp16(ctx: Context) -> str:
    """fp16 autocast and loss scaling through Trainer.train_step, with an injected overflow."""
    p, sizes = ctx.project, ctx.sizes
    config = bert_config(p, sizes.small, dropout=0.0)
    features = random_features(p, config.vocab_size, sizes.check_batch * sizes.check_steps, sizes.check_seq, seed=1)
    steps, injected = sizes.check_steps, 3
    lr = 1e-4

    def run(fp16: bool, overflow_at: set):
        trainer = make_trainer(ctx, config, features, steps, lr, fp16=fp16, skip_nonfinite=not fp16)
        model = trainer.model
        current = {"step": 0}
        target = model.classifier[0].weight  # an inf in one gradient is an overflow

        def poison(grad):
            return torch.full_like(grad, math.inf) if current["step"] in overflow_at else grad

        handle = target.register_hook(poison)
        start = parameter_vector(model)
        skipped, losses, at_injection, grads = [], [], None, []
        with gradients_at_optimizer(p, model, grads):  # only the updates applied reach BERTAdam
            for step in range(1, steps + 1):
                current["step"] = step
                before_params, before_counters = parameter_vector(model), step_counters(trainer.optimizers)
                scale = trainer.scaler.get_scale() if trainer.scaler is not None else None
                skips = trainer.nonfinite_steps_skipped
                losses.append(trainer.train_step(0))
                if fp16:
                    was_skipped = trainer.scaler.get_scale() < scale
                else:
                    was_skipped = trainer.nonfinite_steps_skipped > skips
                if was_skipped:
                    skipped.append(step)
                if step == injected:
                    at_injection = dict(
                        params_unchanged=bool(torch.equal(before_params, parameter_vector(model))),
                        counters_unchanged=before_counters == step_counters(trainer.optimizers),
                        scale=(scale, trainer.scaler.get_scale()) if fp16 else None)
        handle.remove()
        return dict(start=start, end=parameter_vector(model), skipped=skipped, losses=losses, grads=grads,
                    counters=step_counters(trainer.optimizers), at_injection=at_injection)

    half = run(True, {injected})
    expect(injected in half["skipped"], f"the overflow at step {injected} was not skipped (skipped {half['skipped']})")
    expect(half["at_injection"]["params_unchanged"], f"parameters changed at the overflow step {injected}")
    expect(half["at_injection"]["counters_unchanged"], "BERTAdam step counters moved at the overflow step")
    before, after = half["at_injection"]["scale"]
    expect(after == before / 2, f"loss scale {before} -> {after} at the overflow (expected halved)")
    full = run(False, set(half["skipped"]))  # fp32, skipping the same steps
    expect(full["skipped"] == half["skipped"], f"fp32 skipped {full['skipped']}, fp16 {half['skipped']}")
    expect(full["counters"] == half["counters"], "step counters differ between the fp16 and fp32 runs")
    expect(len(half["grads"]) == len(full["grads"]) == steps - len(half["skipped"]), "updates applied differ")
    # The first update applied starts from the same weights in both runs: BERTAdam must get
    # the true (unscaled) gradient, as it clips each tensor to norm 1.
    first = gradient_error(half["grads"][0], full["grads"][0])
    expect(first < 0.02, f"fp16 gradient at the first update vs fp32: {first:.3f} relative (bound 0.02)")
    moved = (full["end"] - full["start"]).norm().item()
    apart = (half["end"] - full["end"]).norm().item()
    expect(moved > 0, "the fp32 run did not move")
    ratio = apart / moved
    expect(ratio < FP16_DRIFT_BOUND, f"after {steps} steps |p16 - p32| / |p32 - p0| = {ratio:.3f} "
                                     f"(bound {FP16_DRIFT_BOUND})")
    return (f"steps skipped {half['skipped']} (overflow injected at {injected}): parameters and step counters "
            f"unchanged, scale {before:g} -> {after:g}; first update's gradient vs fp32 {first:.4f} (bound 0.02); "
            f"after {steps} steps |p16 - p32| / |p32 - p0| = {ratio:.3f} (bound {FP16_DRIFT_BOUND}); "
            f"final loss {half['losses'][-1]:.4f} vs fp32 {full['losses'][-1]:.4f}")


def check_bf16(ctx: Context) -> str:
    """bf16 autocast: loss and weight gradients against fp32; trainer steps keep fp32 weights."""
    p, sizes = ctx.project, ctx.sizes
    config = bert_config(p, sizes.small, dropout=0.0)
    torch.manual_seed(0)
    model = p.modeling.BertForMultiTask(config, [2]).to(ctx.device).train()
    p.modeling.standard_layer_norm_init(model)
    features = random_features(p, config.vocab_size, sizes.check_batch, sizes.check_seq, seed=2)
    batch = {k: v.to(ctx.device) for k, v in p.glue.collate_features(features).items()}

    def loss_and_grads(bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"], 0,
                            labels=batch["label_ids"])
        loss.backward()
        return loss.item(), {n: q.grad.detach().clone() for n, q in model.named_parameters()
                             if q.grad is not None and q.dim() == 2}

    loss32, grads32 = loss_and_grads(False)
    loss16, grads16 = loss_and_grads(True)
    expect(all(g.dtype == torch.float32 for g in grads16.values()), "bf16 gradients are not fp32")
    worst_name, worst = max(((n, ((grads16[n] - g).norm() / g.norm().clamp_min(1e-12)).item())
                             for n, g in grads32.items()), key=lambda item: item[1])
    loss_error = abs(loss16 - loss32) / abs(loss32)
    expect(loss_error < 0.02, f"bf16 loss {loss16:.5f} vs fp32 {loss32:.5f}")
    expect(worst < 0.05, f"gradient of {worst_name}: {worst:.3f} relative to fp32 (bound 0.05)")
    trainer = make_trainer(ctx, bert_config(p, sizes.small), random_features(
        p, config.vocab_size, 4 * sizes.check_batch, sizes.check_seq, seed=3), 2, 1e-4, bf16=True)
    losses = [trainer.train_step(0) for _ in range(2)]
    expect(all(math.isfinite(v) for v in losses), f"--bf16 trainer losses {losses}")
    expect({q.dtype for q in trainer.model.parameters()} == {torch.float32}, "--bf16 changed the parameter dtype")
    return (f"loss {loss16:.5f} vs fp32 {loss32:.5f}; worst weight gradient {worst:.4f} relative "
            f"({worst_name.split('bert.')[-1]}; bound 0.05); 2 --bf16 trainer steps: fp32 weights, losses "
            + ", ".join(f"{v:.4f}" for v in losses))


def reference_bertadam(initial, grads, lr, warmup, t_total, decay, b1=0.9, b2=0.999, eps=1e-6, max_norm=1.0):
    """BERTAdam written out in float64 on the CPU: per-tensor clipping, no bias correction,
    eps outside the square root, decoupled weight decay, warmup_linear on each parameter's
    own counter (all start together here). Returns the parameters after every step."""
    params = [x.clone() for x in initial]
    m = [torch.zeros_like(x) for x in initial]
    v = [torch.zeros_like(x) for x in initial]
    history = []
    for step, step_grads in enumerate(grads):
        progress = step / t_total
        lr_t = lr * (progress / warmup if progress < warmup else 1.0 - progress)
        for i, g in enumerate(step_grads):
            norm = g.norm().item()
            if max_norm / (norm + 1e-6) < 1.0:
                g = g * (max_norm / (norm + 1e-6))
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            params[i] = params[i] - lr_t * (m[i] / (v[i].sqrt() + eps) + decay[i] * params[i])
        history.append([x.clone() for x in params])
    return history


def check_adam(ctx: Context) -> str:
    """Fused BERTAdam on the device against the float64 reference and the plain update."""
    p, sizes = ctx.project, ctx.sizes
    generator = torch.Generator().manual_seed(0)
    shapes = sizes.adam_shapes
    initial = [torch.randn(shape, generator=generator, dtype=torch.float64) * 0.1 for shape in shapes]
    decay = [0.01 if len(shape) > 1 else 0.0 for shape in shapes]
    # gradient norms from well below to well above the clipping norm of 1
    grads = [[torch.randn(shape, generator=generator, dtype=torch.float64) * (10.0 ** ((i + step) % 4 - 3))
              for i, shape in enumerate(shapes)] for step in range(sizes.adam_steps)]
    lr, warmup, t_total = 1e-3, 0.25, sizes.adam_steps
    reference = reference_bertadam(initial, grads, lr, warmup, t_total, decay)

    def run(fused: bool):
        params = [torch.nn.Parameter(x.float().to(ctx.device)) for x in initial]
        groups = [{"params": [q for q, d in zip(params, decay) if d > 0]},
                  {"params": [q for q, d in zip(params, decay) if d == 0], "weight_decay_rate": 0.0}]
        optimizer = p.optimization.BERTAdam(groups, lr=lr, warmup=warmup, t_total=t_total, fused=fused)
        worst = 0.0
        for step, step_grads in enumerate(grads):
            for q, g in zip(params, step_grads):
                q.grad = g.float().to(ctx.device)
            optimizer.step()
            for q, want in zip(params, reference[step]):
                error = (q.detach().double().cpu() - want).abs().max().item() / want.abs().max().item()
                worst = max(worst, error)
        return worst, [q.detach().cpu() for q in params]

    fused_error, fused_params = run(True)
    plain_error, plain_params = run(False)
    between = max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(fused_params, plain_params))
    expect(fused_error < 1e-5, f"fused BERTAdam vs float64 reference: {fused_error:.2e} (bound 1e-5)")
    expect(between < 1e-5, f"fused vs plain update: {between:.2e} (bound 1e-5)")
    return (f"{sizes.adam_steps} steps, {sum(math.prod(s) for s in shapes):,} parameters: fused vs float64 "
            f"reference {fused_error:.1e}, plain vs reference {plain_error:.1e}, fused vs plain {between:.1e} "
            f"(max relative; bound 1e-5)")


def attention_formula(q, k, v, mask):
    scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.size(-1)) + mask.double()
    return torch.softmax(scores, dim=-1) @ v.double()


def check_sdpa(ctx: Context) -> str:
    """kernels.attention (SDPA on CUDA) against the explicit formula, without and with dropout."""
    p, sizes = ctx.project, ctx.sizes
    batch, heads, length, size = sizes.attention
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, length, size, generator=generator) for _ in range(3))
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    lengths[0] = length
    valid = (torch.arange(length)[None, :] < lengths[:, None]).long()
    mask = p.modeling.extended_attention_mask(valid, torch.float32)  # [B, 1, 1, T]
    expected = attention_formula(q, k, v, mask)
    bounds = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}
    errors = {}
    for dtype, bound in bounds.items():
        args = [t.to(ctx.device, dtype) for t in (q, k, v)]
        got = p.kernels.attention(*args, mask.to(ctx.device, dtype), 0.0)
        errors[dtype] = (got.double().cpu() - expected).abs().max().item()
        expect(errors[dtype] < bound, f"no dropout, {dtype}: max error {errors[dtype]:.2e} (bound {bound})")

    # With dropout: V = I makes the output the dropped-out probability matrix itself.
    drop = 0.1
    square_q, square_k = (torch.randn(batch, heads, length, length, generator=generator) for _ in range(2))
    identity = torch.eye(length).expand(batch, heads, length, length).contiguous()
    probs = torch.softmax(square_q.double() @ square_k.double().transpose(-1, -2) / math.sqrt(length)
                          + mask.double(), dim=-1)
    kept_wrong, dropped, entries, row_sums = 0, 0, 0, []
    for _ in range(sizes.dropout_repeats):
        out = p.kernels.attention(square_q.to(ctx.device), square_k.to(ctx.device), identity.to(ctx.device),
                                  mask.to(ctx.device), drop).double().cpu()
        live = probs > 1e-6  # masked keys have probability ~0: nothing to drop
        kept = (out != 0) & live
        scaled = probs / (1 - drop)
        kept_wrong += int(((out - scaled).abs() > 1e-4 * scaled + 1e-6)[kept].sum())
        dropped += int(((out == 0) & live).sum())
        entries += int(live.sum())
        row_sums.append(out.sum(-1).flatten())
    rate = dropped / entries
    rate_bound = 5 * math.sqrt(drop * (1 - drop) / entries)
    sums = torch.cat(row_sums)
    sum_bound = 5 * sums.std().item() / math.sqrt(len(sums))
    expect(kept_wrong == 0, f"with dropout: {kept_wrong} kept probabilities not scaled by 1 / (1 - p)")
    expect(abs(rate - drop) < rate_bound, f"with dropout: drop rate {rate:.4f}, expected {drop} +- {rate_bound:.4f}")
    expect(abs(sums.mean().item() - 1) < sum_bound, f"with dropout: mean row sum {sums.mean().item():.4f}, expected 1")
    return ("no dropout, max error vs formula: " + ", ".join(
        f"{str(d).split('.')[-1]} {e:.1e}" for d, e in errors.items())
        + f"; dropout {drop}: every kept probability scaled by 1/(1-p), drop rate {rate:.4f} "
          f"(+-{rate_bound:.4f}), mean row sum {sums.mean().item():.4f} over {entries:,} entries")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_parallel(ctx: Context) -> str:
    """The trainer's step gradient: single device, DataParallel, one-process NCCL (DDP)."""
    p, sizes = ctx.project, ctx.sizes
    import torch.distributed as dist
    config = bert_config(p, sizes.small, dropout=0.0)
    features = random_features(p, config.vocab_size, sizes.check_batch * 2, sizes.check_seq, seed=4)
    training = p.training

    def gradients(train_ctx=None):
        trainer = make_trainer(ctx, config, features, 2, 0.0, train_ctx=train_ctx)
        record: list = []
        with gradients_at_optimizer(p, trainer.model, record):
            for _ in range(2):
                trainer.train_step(0)
        return record, trainer

    single, _ = gradients()
    replicas = max(2, torch.cuda.device_count()) if ctx.cuda else 2
    wrapped, trainer = gradients(training.DistributedContext(device=ctx.device, n_gpu=replicas))
    parallel_class = type(trainer.wrapped).__name__
    dp_error = max(gradient_error(a, b) for a, b in zip(wrapped, single))
    backend = "nccl" if ctx.cuda else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    try:
        ddp, trainer = gradients(training.DistributedContext(device=ctx.device, world_size=1,
                                                             n_gpu=1 if ctx.cuda else 0, distributed=True))
        ddp_class = type(trainer.wrapped).__name__
    finally:
        dist.destroy_process_group()
    ddp_error = max(gradient_error(a, b) for a, b in zip(ddp, single))
    expect(parallel_class == "DataParallel" and ddp_class == "DistributedDataParallel",
           f"wrapped as {parallel_class} and {ddp_class}")
    expect(dp_error < 1e-6, f"DataParallel gradient vs single device: {dp_error:.2e} (bound 1e-6)")
    expect(ddp_error < 1e-6, f"{backend} DDP gradient vs single device: {ddp_error:.2e} (bound 1e-6)")
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    layout = {0: "no GPU: runs the module directly", 1: "one GPU: one replica"}.get(gpus, f"{gpus} replicas")
    return (f"DataParallel ({layout}): {dp_error:.1e}; one-process {backend} group (DDP): {ddp_error:.1e} "
            f"(per-tensor relative gradient error over 2 steps; bound 1e-6)")


# ---- the training step against transformers ---------------------------------------------

def training_flops(config, batch: int, seq: int) -> float:
    """Model FLOPs of one training step (3 x forward) on a [batch, seq] batch: matrix
    products only (4H^2 + 2HI per token and layer, 2TH for attention), pooler and a
    2-way classifier on [CLS]; every position counted, padding included."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = layers * (4 * h * h + 2 * h * i + 2 * seq * h)
    return 3 * 2.0 * (batch * seq * per_token + batch * (h * h + 2 * h))


DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def measure_peaks(ctx: Context) -> dict:
    """FLOP/s of an n x n x n torch.matmul in each dtype (median of 10), the MFU denominators."""
    n = ctx.sizes.matmul
    peaks = {}
    for name, dtype in DTYPES.items():
        a = torch.randn(n, n, device=ctx.device, dtype=getattr(torch, dtype) if dtype else torch.float32)
        b, out = torch.randn_like(a), torch.empty_like(a)
        times = []
        for index in range(13):
            ctx.synchronize()
            start = time.perf_counter()
            torch.matmul(a, b, out=out)
            ctx.synchronize()
            if index >= 3:
                times.append(time.perf_counter() - start)
        peaks[name] = 2.0 * n ** 3 / statistics.median(times)
        del a, b, out
    return peaks


def hf_model(config, attention: str):
    import transformers
    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        hidden_act="gelu", hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps, num_labels=2)
    try:
        return transformers.BertForSequenceClassification._from_config(hf_config, attn_implementation=attention)
    except TypeError:  # older transformers
        hf_config._attn_implementation = attention
        return transformers.BertForSequenceClassification(hf_config)


def make_step(ctx: Context, model, hf: bool, batch, dtype: str):
    """forward, backward and BERTAdam (through a GradScaler in fp16), as one callable."""
    p = ctx.project
    optimizer = p.optimization.BERTAdam(model.parameters(), lr=2e-5)
    scaler = torch.amp.GradScaler(ctx.device.type) if dtype == "fp16" else None
    ids, types_, mask, labels = batch
    autocast_dtype = getattr(torch, DTYPES[dtype]) if DTYPES[dtype] else None

    def step():
        with torch.autocast(ctx.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            if hf:
                loss = model(input_ids=ids, token_type_ids=types_, attention_mask=mask, labels=labels).loss
            else:
                loss, _ = model(ids, types_, mask, labels=labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        model.zero_grad(set_to_none=True)

    return step


def step_memory(ctx: Context, step: Callable[[], None]) -> float | None:
    """Peak bytes a step allocates above what was allocated before it (CUDA only)."""
    if not ctx.cuda:
        step()
        return None
    ctx.synchronize()
    torch.cuda.reset_peak_memory_stats(ctx.device)
    base = torch.cuda.memory_allocated(ctx.device)
    step()
    ctx.synchronize()
    return torch.cuda.max_memory_allocated(ctx.device) - base


def check_training_step(ctx: Context, size: str, dtype: str) -> str:
    p, sizes = ctx.project, ctx.sizes
    if not ctx.peaks:
        ctx.peaks.update(measure_peaks(ctx))
    config = bert_config(p, sizes.models[size])
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, config.vocab_size, (sizes.batch, sizes.seq), generator=generator)
    types_ = torch.zeros_like(ids)
    types_[:, sizes.seq // 2:] = 1
    batch = [t.to(ctx.device) for t in (ids, types_, torch.ones_like(ids),
                                        torch.randint(0, 2, (sizes.batch,), generator=generator))]
    torch.manual_seed(0)
    models = {"ours": p.modeling.BertForSequenceClassification(config, 2)}
    errors = {}
    for attention in ("sdpa", "eager"):
        try:
            models[f"hf-{attention}"] = hf_model(config, attention)
        except Exception as err:  # noqa: BLE001 - one side missing must not hide the other
            errors[f"hf-{attention}"] = f"{type(err).__name__}: {err}"
    steps, memory = {}, {}
    for name, model in models.items():
        model.to(ctx.device).train()
        steps[name] = make_step(ctx, model, name != "ours", batch, dtype)
        for _ in range(sizes.warmup_steps):
            steps[name]()
        memory[name] = step_memory(ctx, steps[name])
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(sizes.timed_steps):  # alternated, so a slow moment hits all alike
        for name in (list(steps) if round_index % 2 == 0 else list(steps)[::-1]):
            ctx.synchronize()
            start = time.perf_counter()
            steps[name]()
            ctx.synchronize()
            times[name].append(time.perf_counter() - start)
    for model in models.values():
        model.cpu()
    del models, steps
    if ctx.cuda:
        torch.cuda.empty_cache()
    median = {name: statistics.median(values) for name, values in times.items()}
    flops = training_flops(config, sizes.batch, sizes.seq)
    peak = ctx.peaks[dtype]
    hf_names = [n for n in median if n != "hf" and n.startswith("hf")]
    parts = [f"ours {median['ours'] * 1e3:.1f} ms (MFU {flops / median['ours'] / peak:.1%})"]
    if hf_names:
        best = min(hf_names, key=median.get)
        parts.append("HF " + ", ".join(f"{n[3:]} {median[n] * 1e3:.1f} ms" for n in hf_names)
                     + f" -> ours/HF best ({best[3:]}) {median['ours'] / median[best]:.2f}x")
    parts.append(f"{dtype} matmul peak {peak / 1e12:.1f} TFLOP/s")
    if memory["ours"] is not None:
        parts.append("peak step memory " + ", ".join(
            f"{n} {memory[n] / 2 ** 20:,.0f} MiB" for n in memory))
    parts.extend(f"{n}: {e}" for n, e in errors.items())
    return "; ".join(parts)


def check_memory(ctx: Context) -> str:
    if not ctx.cuda:
        return "n/a on the CPU"
    peak = torch.cuda.max_memory_allocated(ctx.device)
    total = torch.cuda.get_device_properties(ctx.device).total_memory
    return f"{peak / 2 ** 30:.2f} GiB allocated at most, of {total / 2 ** 30:.1f} GiB"


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------

def plan(sizes: Sizes) -> list[tuple[str, Callable[[Context], str]]]:
    """(row name, check) in the order they run: correctness first, timings after."""
    rows = [("fp16", check_fp16), ("bf16", check_bf16), ("adam", check_adam), ("sdpa", check_sdpa),
            ("parallel", check_parallel)]
    for size in sizes.models:
        for dtype in DTYPES:
            rows.append((f"train-{size}-{dtype}", lambda ctx, s=size, d=dtype: check_training_step(ctx, s, d)))
    rows.append(("memory", check_memory))
    return rows


def matches(name: str, patterns: Sequence[str]) -> bool:
    """A pattern names a row, or a prefix before '-' ('train' is every training row)."""
    return any(name == pattern or name.startswith(pattern + "-") for pattern in patterns)


def select(rows, only: Sequence[str], skip: Sequence[str]):
    """The rows --only and --skip leave; a pattern that names no row is a ValueError."""
    names = [name for name, _ in rows]
    unknown = [pattern for pattern in [*only, *skip] if not any(matches(name, [pattern]) for name in names)]
    if unknown:
        raise ValueError(f"no check named {', '.join(unknown)} (checks: {', '.join(names)})")
    return [(n, f) for n, f in rows if (not only or matches(n, only)) and not matches(n, skip)]


def run_checks(ctx: Context, rows, budget_s: float, echo: Callable[[str], None] = print) -> list[Row]:
    results = []
    deadline = time.perf_counter() + budget_s
    for name, check in rows:
        if time.perf_counter() > deadline:
            results.append(Row(name, "skipped", f"time budget of {budget_s:.0f} s used up"))
            continue
        start = time.perf_counter()
        try:
            row = Row(name, "ok", check(ctx))
        except CheckFailed as failure:
            row = Row(name, "FAIL", str(failure))
        except Exception as err:  # noqa: BLE001 - one broken check must not stop the others
            where = traceback.extract_tb(err.__traceback__)[-1]
            row = Row(name, "error", f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                                     f" ({Path(where.filename).name}:{where.lineno})")
        row.seconds = time.perf_counter() - start
        echo(f"  {row.name}: {row.status} ({row.seconds:.1f} s)")
        results.append(row)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    names = [name for name, _ in plan(FULL)]
    parser.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=[],
                        help="comma list of checks to run (of: " + ", ".join(names) + "; 'train' = every training row)")
    parser.add_argument("--skip", type=lambda s: [x for x in s.split(",") if x], default=[],
                        help="comma list of checks to leave out")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds after which the remaining checks are skipped")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (only with --tiny: tests this script)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (seconds; figures mean nothing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if torch is None:
        print(f"gpu_check: PyTorch is not installed for {sys.executable}; nothing was run")
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU available (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "nothing was run")
        return 0
    if args.device == "cpu" and not args.tiny:
        print("gpu_check: --device cpu runs only with --tiny (it tests this script, not the machine)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:  # DDP and the trainer want an index
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = TINY if args.tiny else FULL
    try:
        rows = select(plan(sizes), args.only, args.skip)
    except ValueError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    ctx = Context(device=device, sizes=sizes, project=import_project())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (self-test)"
    try:
        import transformers
        hf_version = transformers.__version__
    except Exception:  # noqa: BLE001
        hf_version = "not importable"
    print(f"gpu_check on {name}: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {hf_version}, "
          f"{'toy' if args.tiny else 'full'} sizes, {len(rows)} checks", flush=True)
    trainer_log = logging.getLogger("run_multi_task")
    level = trainer_log.level
    trainer_log.setLevel(logging.ERROR)  # the steps these checks skip on purpose are not news
    try:
        results = run_checks(ctx, rows, args.budget, echo=lambda line: print(line, flush=True))
    finally:
        trainer_log.setLevel(level)
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n", encoding="utf-8")
    return 1 if any(r.status in ("FAIL", "error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
