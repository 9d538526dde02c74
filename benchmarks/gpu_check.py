"""GPU check: what the CPU tests cannot show, on one CUDA GPU (`make gpu-check`).

    python3 benchmarks/gpu_check.py [--only NAMES] [--skip NAMES] [--json FILE]

Runs with the machine's own Python as it is (PyTorch with CUDA, transformers and what
they need; no .venv, no install, no download: random weights) and prints one table in
under five minutes, one row per check:

  fp16      fp16 autocast with loss scaling through the trainer's step: an overflow injected
            at one step skips exactly that update (parameters and BERTAdam's step counters
            unchanged, loss scale halved); the first update's gradient matches fp32, and
            the parameters stay close to an fp32 run that skipped the same steps
  bf16      bf16 autocast: loss and every weight gradient against fp32; two --bf16 trainer
            steps keep fp32 parameters and finite losses
  adam      fused and plain BERTAdam on the GPU against the float64 reference trajectory
  sdpa      kernels.attention (SDPA on CUDA) against the softmax formula in fp32, bf16 and
            fp16; with dropout, every kept probability scaled by 1 / (1 - p), the drop rate
            and the row sums as expected
  parallel  the trainer's gradient under DataParallel and in a one-process NCCL group (DDP)
            against one device
  train-<size>-<dtype>  the training step against transformers' BertForSequenceClassification
            (the faster of its SDPA and eager attention), same weights and batch, at
            MiniLM and BERT-base size in fp32, bf16 and fp16: times, MFU against the
            matmul peak timed between the steps, peak memory of a step
  memory    peak GPU memory of the whole check

A check that fails or raises says why in its row and the others still run; the exit
status is 1 if any row failed. Without a CUDA GPU, or without PyTorch, it says so in one
line and exits 0. ``--device cpu --tiny`` runs every check on the CPU at toy sizes: that
is how tests/test_gpu_check.py tests this script (the figures mean nothing).

Nothing here is a second copy: the timing harness, the FLOP count and transformers' twin
models are benchmarks/bench.py's; the BERTAdam reference and the gradient comparison are
tests/references.py's; the gradients are captured by tests/capture_gradients.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import socket
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

try:
    import torch
except ImportError:  # said by main() in one line
    torch = None
MISSING = None  # what else failed to import, said by main() in one line
if torch is not None:
    try:
        import bench
        import torch.distributed as dist
        from capture_gradients import recording
        from references import bertadam_trajectory, relative_gradient_error

        import glue
        import kernels
        import modeling
        import training
        from optimization import BERTAdam
    except ImportError as err:
        MISSING = str(err)

DEFAULT_BUDGET_S = 270.0  # the rows still to run are skipped after this (the whole check: < 5 min)
# fp16 against fp32 after the check's steps: BERTAdam's first updates are nearly
# lr * sign(gradient), so elements whose gradient is near 0 may move opposite ways in the
# two runs; this bounds that drift, relative to how far the fp32 run moved.
FP16_DRIFT_BOUND = 0.5
TOY = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
           max_position_embeddings=64, type_vocab_size=2)


@dataclass(frozen=True)
class Sizes:
    models: tuple  # the training-step comparison's sizes (bench.our_config's names, or "toy")
    small: str  # the model of the fp16, bf16 and parallel checks
    batch: int  # the training-step comparison's batch x seq, timed rounds, matmul n x n x n
    seq: int
    rounds: int
    matmul: int
    check_batch: int  # the fp16, bf16 and parallel checks' batch x seq, and fp16's steps
    check_seq: int
    check_steps: int
    attention: tuple  # (batch, heads, length, head size) of the attention check
    dropout_repeats: int
    adam_shapes: tuple
    adam_steps: int


FULL = Sizes(("minilm", "base"), "minilm", 32, 128, 10, 8192, 16, 64, 10, (8, 12, 128, 64), 20,
             ((768, 3072), (3072,), (30522, 64), (768,)), 20)
TINY = Sizes(("toy",), "toy", 4, 16, 2, 64, 8, 16, 5, (2, 2, 16, 16), 4, ((16, 8), (8,)), 4)
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class Row:
    name: str
    status: str  # ok, FAIL, error, skipped
    detail: str
    seconds: float = 0.0


@dataclass
class Context:
    device: torch.device
    sizes: Sizes

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def expect(condition: bool, message: str) -> None:
    """A check's bound: outside it the row reads FAIL with ``message``."""
    if not condition:
        raise AssertionError(message)


# --------------------------------------------------------------------------------------
# Models, data, trainers
# --------------------------------------------------------------------------------------

def bert_config(name: str, dropout: float = 0.1) -> modeling.BertConfig:
    config = modeling.BertConfig(**TOY) if name == "toy" else bench.our_config(name)
    return config.replace(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def random_features(vocab_size: int, count: int, seq: int, seed: int, shortest: int | None = None):
    """Training examples of random tokens, lengths ``shortest`` (seq // 2) to ``seq``, random labels."""
    generator = torch.Generator().manual_seed(seed)
    features = []
    for _ in range(count):
        length = int(torch.randint(shortest or seq // 2, seq + 1, (1,), generator=generator))
        ids = torch.randint(1, vocab_size, (length,), generator=generator).tolist()
        label = int(torch.randint(0, 2, (1,), generator=generator))
        features.append(glue.InputFeatures(ids, [0] * (length // 2) + [1] * (length - length // 2), label))
    return features


def make_trainer(ctx: Context, config, features, steps: int, lr: float, train_ctx=None, **flags):
    """A training.Trainer over one task (the real step: autocast, loss scaling, checks)."""
    torch.manual_seed(0)
    model = modeling.BertForMultiTask(config, [2])
    modeling.standard_layer_norm_init(model)
    task = training.TaskData(name="sst", task_id=0, train=list(features))
    settings = training.TrainingSettings(
        output_dir=Path(tempfile.gettempdir()), vocab_file="", train_batch_size=ctx.sizes.check_batch,
        eval_batch_size=ctx.sizes.check_batch, gradient_accumulation_steps=1, num_train_epochs=1,
        steps_per_epoch=steps, learning_rate=lr, warmup_proportion=0.0, sample="rr", seed=0,
        max_seq_length=ctx.sizes.check_seq, save_adapters=False, plot=False, **flags)
    train_ctx = train_ctx or training.DistributedContext(device=ctx.device, n_gpu=1 if ctx.cuda else 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*GradScaler is enabled, but CUDA is not available")
        trainer = training.Trainer(model, [task], settings, train_ctx)
    if settings.fp16 and not ctx.cuda:  # the trainer's scaler is CUDA's; on the CPU (self-test) the CPU's
        trainer.scaler = torch.amp.GradScaler("cpu")
    trainer.wrapped.train()
    return trainer


def parameter_vector(model) -> torch.Tensor:
    return torch.cat([q.detach().float().flatten().cpu() for q in model.parameters()])


def step_counters(optimizers) -> list[int]:
    return [int(state["step"]) for optimizer in optimizers for state in optimizer.state.values() if state]


# --------------------------------------------------------------------------------------
# The checks: each takes the context and returns the figures for its row
# --------------------------------------------------------------------------------------

def check_fp16(ctx: Context) -> str:
    sizes, steps, injected = ctx.sizes, ctx.sizes.check_steps, 3
    config = bert_config(sizes.small, dropout=0.0)
    features = random_features(config.vocab_size, sizes.check_batch * steps, sizes.check_seq, seed=1)

    def run(fp16: bool, overflow_at: set):
        trainer = make_trainer(ctx, config, features, steps, 1e-4, fp16=fp16, skip_nonfinite_loss=not fp16)
        current = {"step": 0}  # an inf in one gradient is an overflow
        hook = trainer.model.classifier[0].weight.register_hook(
            lambda grad: torch.full_like(grad, math.inf) if current["step"] in overflow_at else grad)
        start, skipped, losses, grads = parameter_vector(trainer.model), [], [], []
        with recording(grads):  # only the updates applied reach BERTAdam
            for step in range(1, steps + 1):
                current["step"] = step
                before = parameter_vector(trainer.model), step_counters(trainer.optimizers)
                scale = trainer.scaler.get_scale() if fp16 else None
                skips = trainer.nonfinite_steps_skipped
                losses.append(trainer.train_step(0))
                if (trainer.scaler.get_scale() < scale) if fp16 else (trainer.nonfinite_steps_skipped > skips):
                    skipped.append(step)
                if step == injected:
                    at_injection = dict(params=torch.equal(before[0], parameter_vector(trainer.model)),
                                        counters=before[1] == step_counters(trainer.optimizers),
                                        scale=(scale, trainer.scaler.get_scale()) if fp16 else None)
        hook.remove()
        return dict(start=start, end=parameter_vector(trainer.model), skipped=skipped, losses=losses,
                    grads=[r["grads"] for r in grads], counters=step_counters(trainer.optimizers), at=at_injection)

    half = run(True, {injected})
    expect(injected in half["skipped"], f"the overflow at step {injected} was not skipped (skipped {half['skipped']})")
    expect(half["at"]["params"], f"parameters changed at the overflow step {injected}")
    expect(half["at"]["counters"], "BERTAdam step counters moved at the overflow step")
    before, after = half["at"]["scale"]
    expect(after == before / 2, f"loss scale {before} -> {after} at the overflow (expected halved)")
    full = run(False, set(half["skipped"]))  # fp32, skipping the same steps
    expect(full["skipped"] == half["skipped"], f"fp32 skipped {full['skipped']}, fp16 {half['skipped']}")
    expect(full["counters"] == half["counters"], "step counters differ between the fp16 and fp32 runs")
    expect(len(half["grads"]) == len(full["grads"]) == steps - len(half["skipped"]), "updates applied differ")
    # The first update applied starts from the same weights in both runs: BERTAdam must get
    # the true (unscaled) gradient, as it clips each tensor to norm 1.
    first = relative_gradient_error(half["grads"][0], full["grads"][0])
    expect(first < 0.02, f"fp16 gradient at the first update vs fp32: {first:.3f} relative (bound 0.02)")
    moved = (full["end"] - full["start"]).norm().item()
    expect(moved > 0, "the fp32 run did not move")
    ratio = (half["end"] - full["end"]).norm().item() / moved
    expect(ratio < FP16_DRIFT_BOUND, f"after {steps} steps |p16 - p32| / |p32 - p0| = {ratio:.3f} "
                                     f"(bound {FP16_DRIFT_BOUND})")
    return (f"steps skipped {half['skipped']} (overflow injected at {injected}): parameters and step counters "
            f"unchanged, scale {before:g} -> {after:g}; first update's gradient vs fp32 {first:.4f} (bound 0.02); "
            f"after {steps} steps |p16 - p32| / |p32 - p0| = {ratio:.3f} (bound {FP16_DRIFT_BOUND}); "
            f"final loss {half['losses'][-1]:.4f} vs fp32 {full['losses'][-1]:.4f}")


def check_bf16(ctx: Context) -> str:
    sizes = ctx.sizes
    config = bert_config(sizes.small, dropout=0.0)
    torch.manual_seed(0)
    model = modeling.BertForMultiTask(config, [2]).to(ctx.device).train()
    modeling.standard_layer_norm_init(model)
    features = random_features(config.vocab_size, sizes.check_batch, sizes.check_seq, seed=2)
    batch = {k: v.to(ctx.device) for k, v in glue.collate_features(features).items()}

    def loss_and_grads(bf16: bool):
        model.zero_grad(set_to_none=True)
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model(batch["input_ids"], batch["segment_ids"], batch["input_mask"], 0,
                            labels=batch["label_ids"])
        loss.backward()
        return loss.item(), {n: q.grad.detach().clone() for n, q in model.named_parameters() if q.dim() == 2}

    loss32, grads32 = loss_and_grads(False)
    loss16, grads16 = loss_and_grads(True)
    expect(all(g.dtype == torch.float32 for g in grads16.values()), "bf16 gradients are not fp32")
    worst_name, worst = max(((n, ((grads16[n] - g).norm() / g.norm().clamp_min(1e-12)).item())
                             for n, g in grads32.items()), key=lambda item: item[1])
    expect(abs(loss16 - loss32) / abs(loss32) < 0.02, f"bf16 loss {loss16:.5f} vs fp32 {loss32:.5f}")
    expect(worst < 0.05, f"gradient of {worst_name}: {worst:.3f} relative to fp32 (bound 0.05)")
    trainer = make_trainer(ctx, bert_config(sizes.small), random_features(
        config.vocab_size, 4 * sizes.check_batch, sizes.check_seq, seed=3), 2, 1e-4, bf16=True)
    losses = [trainer.train_step(0) for _ in range(2)]
    expect(all(math.isfinite(v) for v in losses), f"--bf16 trainer losses {losses}")
    expect({q.dtype for q in trainer.model.parameters()} == {torch.float32}, "--bf16 changed the parameter dtype")
    return (f"loss {loss16:.5f} vs fp32 {loss32:.5f}; worst weight gradient {worst:.4f} relative "
            f"({worst_name.split('bert.')[-1]}; bound 0.05); 2 --bf16 trainer steps: fp32 weights, losses "
            + ", ".join(f"{v:.4f}" for v in losses))


def check_adam(ctx: Context) -> str:
    """Fused and plain BERTAdam on the device against the float64 reference."""
    shapes, steps = ctx.sizes.adam_shapes, ctx.sizes.adam_steps
    generator = torch.Generator().manual_seed(0)
    initial = {f"p{i}": torch.randn(shape, generator=generator, dtype=torch.float64).numpy() * 0.1
               for i, shape in enumerate(shapes)}
    decay = {name: 0.01 if value.ndim > 1 else 0.0 for name, value in initial.items()}
    # gradient norms from well below to well above the clipping norm of 1
    grads = {name: [torch.randn(value.shape, generator=generator, dtype=torch.float64).numpy()
                    * 10.0 ** ((i + step) % 4 - 3) for step in range(steps)]
             for i, (name, value) in enumerate(initial.items())}
    lr, warmup = 1e-3, 0.25
    reference, _ = bertadam_trajectory(initial, grads, decay, lr=lr, warmup=warmup, t_total=steps, steps=steps)
    errors = {}
    for fused in (True, False):
        params = {name: torch.nn.Parameter(torch.tensor(value, dtype=torch.float32, device=ctx.device))
                  for name, value in initial.items()}
        optimizer = BERTAdam([{"params": [params[n] for n in params if decay[n] > 0]},
                              {"params": [params[n] for n in params if decay[n] == 0], "weight_decay_rate": 0.0}],
                             lr=lr, warmup=warmup, t_total=steps, fused=fused)
        worst = 0.0
        for step in range(steps):
            for name, q in params.items():
                q.grad = torch.tensor(grads[name][step], dtype=torch.float32, device=ctx.device)
            optimizer.step()
            for name, q in params.items():
                want = reference[step][name]
                worst = max(worst, abs(q.detach().double().cpu().numpy() - want).max() / abs(want).max())
        errors["fused" if fused else "plain"] = worst
        expect(worst < 1e-5, f"{'fused' if fused else 'plain'} BERTAdam vs float64 reference: {worst:.2e} "
                             "(bound 1e-5)")
    return (f"{steps} steps, {sum(math.prod(s) for s in shapes):,} parameters: fused vs float64 reference "
            f"{errors['fused']:.1e}, plain {errors['plain']:.1e} (max relative; bound 1e-5)")


def check_sdpa(ctx: Context) -> str:
    """kernels.attention (SDPA on CUDA) against the explicit formula, without and with dropout."""
    batch, heads, length, size = ctx.sizes.attention
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, length, size, generator=generator) for _ in range(3))
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    lengths[0] = length
    mask = modeling.extended_attention_mask((torch.arange(length)[None, :] < lengths[:, None]).long(), torch.float32)
    expected = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(size) + mask, -1) @ v.double()
    errors = {}
    for dtype, bound in {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}.items():
        got = kernels.attention(*(t.to(ctx.device, dtype) for t in (q, k, v, mask)), 0.0)
        errors[dtype] = (got.double().cpu() - expected).abs().max().item()
        expect(errors[dtype] < bound, f"no dropout, {dtype}: max error {errors[dtype]:.2e} (bound {bound})")

    # With dropout: V = I makes the output the dropped-out probability matrix itself.
    drop = 0.1
    square_q, square_k = (torch.randn(batch, heads, length, length, generator=generator) for _ in range(2))
    identity = torch.eye(length).expand(batch, heads, length, length).contiguous()
    probs = torch.softmax(square_q.double() @ square_k.double().transpose(-1, -2) / math.sqrt(length) + mask, -1)
    live = probs > 1e-6  # masked keys have probability ~0: nothing to drop
    scaled = probs / (1 - drop)
    kept_wrong, dropped, row_sums = 0, 0, []
    for _ in range(ctx.sizes.dropout_repeats):
        out = kernels.attention(*(t.to(ctx.device) for t in (square_q, square_k, identity, mask)), drop)
        out = out.double().cpu()
        kept_wrong += int(((out - scaled).abs() > 1e-4 * scaled + 1e-6)[(out != 0) & live].sum())
        dropped += int(((out == 0) & live).sum())
        row_sums.append(out.sum(-1).flatten())
    entries = int(live.sum()) * ctx.sizes.dropout_repeats
    rate, rate_bound = dropped / entries, 5 * math.sqrt(drop * (1 - drop) / entries)
    sums = torch.cat(row_sums)
    expect(kept_wrong == 0, f"with dropout: {kept_wrong} kept probabilities not scaled by 1 / (1 - p)")
    expect(abs(rate - drop) < rate_bound, f"with dropout: drop rate {rate:.4f}, expected {drop} +- {rate_bound:.4f}")
    expect(abs(sums.mean().item() - 1) < 5 * sums.std().item() / math.sqrt(len(sums)),
           f"with dropout: mean row sum {sums.mean().item():.4f}, expected 1")
    return ("no dropout, max error vs formula: " + ", ".join(f"{str(d).split('.')[-1]} {e:.1e}"
                                                             for d, e in errors.items())
            + f"; dropout {drop}: every kept probability scaled by 1/(1-p), drop rate {rate:.4f} "
              f"(+-{rate_bound:.4f}), mean row sum {sums.mean().item():.4f} over {entries:,} entries")


def check_parallel(ctx: Context) -> str:
    """The trainer's step gradient: single device, DataParallel, one-process NCCL (DDP)."""
    config = bert_config(ctx.sizes.small, dropout=0.0)
    features = random_features(config.vocab_size, ctx.sizes.check_batch * 2, ctx.sizes.check_seq, seed=4)

    def gradients(train_ctx=None):
        trainer, records = make_trainer(ctx, config, features, 2, 0.0, train_ctx=train_ctx), []
        with recording(records):
            for _ in range(2):
                trainer.train_step(0)
        return [r["grads"] for r in records], type(trainer.wrapped).__name__

    single, _ = gradients()
    replicas = max(2, torch.cuda.device_count()) if ctx.cuda else 2
    data_parallel, dp_class = gradients(training.DistributedContext(device=ctx.device, n_gpu=replicas))
    backend = "nccl" if ctx.cuda else "gloo"
    with socket.socket() as sock:  # a free port for the one-process group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=120))
    try:
        ddp, ddp_class = gradients(training.DistributedContext(device=ctx.device, world_size=1,
                                                               n_gpu=1 if ctx.cuda else 0, distributed=True))
    finally:
        dist.destroy_process_group()
    expect((dp_class, ddp_class) == ("DataParallel", "DistributedDataParallel"), f"wrapped as {dp_class}, {ddp_class}")
    dp_error = max(relative_gradient_error(a, b) for a, b in zip(data_parallel, single))
    ddp_error = max(relative_gradient_error(a, b) for a, b in zip(ddp, single))
    expect(dp_error < 1e-6, f"DataParallel gradient vs single device: {dp_error:.2e} (bound 1e-6)")
    expect(ddp_error < 1e-6, f"{backend} DDP gradient vs single device: {ddp_error:.2e} (bound 1e-6)")
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    layout = {0: "no GPU: runs the module directly", 1: "one GPU: one replica"}.get(gpus, f"{gpus} replicas")
    return (f"DataParallel ({layout}): {dp_error:.1e}; one-process {backend} group (DDP): {ddp_error:.1e} "
            f"(per-tensor relative gradient error over 2 steps; bound 1e-6)")


def check_training_step(ctx: Context, size: str, dtype: str) -> str:
    """bench.py's comparison on the GPU: ours against transformers' SDPA and eager twins,
    same weights and batch, runs alternated with the matmul timing the peak."""
    sizes, config = ctx.sizes, bert_config(size)
    features = random_features(config.vocab_size, sizes.batch, sizes.seq, seed=0, shortest=sizes.seq)
    batch = {k: v.to(ctx.device) for k, v in glue.collate_features(features).items()}
    steps = {}
    for name, model in bench.paired_classifiers(config).items():
        model.to(ctx.device).train()
        steps[name] = bench.make_step(model, name != "ours", batch, dtype, bench.new_optimizer(model))
    result = bench.benchmark_steps(steps, sizes.rounds, memory=ctx.cuda, device=ctx.device,
                                   peak=bench.PeakRunner(sizes.matmul, bench.AUTOCAST[dtype] or torch.float32, ctx.device))
    del steps
    if ctx.cuda:
        torch.cuda.empty_cache()
    flops = bench.training_flops(config, [sizes.seq] * sizes.batch)
    peak = statistics.median(result.peak_gflops) * 1e9
    ours, best = result.median("ours"), result.fastest_hf()
    parts = [f"ours {ours * 1e3:.1f} ms (MFU {flops / ours / peak:.1%})",
             "HF " + ", ".join(f"{n[3:]} {result.median(n) * 1e3:.1f} ms" for n in bench.HF_NAMES)
             + f" -> ours/HF best ({best[3:]}) {ours / result.median(best):.2f}x",
             f"{dtype} matmul peak {peak / 1e12:.1f} TFLOP/s"]
    if ctx.cuda:
        parts.append("peak step memory " + ", ".join(f"{n} {m / 2 ** 20:,.0f} MiB" for n, m in result.memory.items()))
    return "; ".join(parts)


def check_memory(ctx: Context) -> str:
    if not ctx.cuda:
        return "n/a on the CPU"
    total = torch.cuda.get_device_properties(ctx.device).total_memory
    return f"{torch.cuda.max_memory_allocated(ctx.device) / 2 ** 30:.2f} GiB allocated at most, of {total / 2 ** 30:.1f} GiB"


# --------------------------------------------------------------------------------------
# Running: one row per check, one table
# --------------------------------------------------------------------------------------

def plan(sizes: Sizes) -> list:
    """(row name, check) in the order they run: correctness first, timings after."""
    rows = [("fp16", check_fp16), ("bf16", check_bf16), ("adam", check_adam), ("sdpa", check_sdpa),
            ("parallel", check_parallel)]
    rows += [(f"train-{size}-{dtype}", lambda ctx, s=size, d=dtype: check_training_step(ctx, s, d))
             for size in sizes.models for dtype in DTYPES]
    return rows + [("memory", check_memory)]


def select(rows, only, skip):
    """The rows --only and --skip leave: a pattern names a row or a prefix before '-'
    ('train' is every training row); one that names no row is a ValueError."""
    def named(name, patterns):
        return any(name == pattern or name.startswith(pattern + "-") for pattern in patterns)

    unknown = [pattern for pattern in [*only, *skip] if not any(named(name, [pattern]) for name, _ in rows)]
    if unknown:
        raise ValueError(f"no check named {', '.join(unknown)} (checks: {', '.join(name for name, _ in rows)})")
    return [(name, check) for name, check in rows if (not only or named(name, only)) and not named(name, skip)]


def run_checks(ctx: Context, rows, budget_s: float) -> list[Row]:
    results, deadline = [], time.perf_counter() + budget_s
    for name, check in rows:
        start = time.perf_counter()
        if start > deadline:
            row = Row(name, "skipped", f"time budget of {budget_s:.0f} s used up")
        else:
            try:
                row = Row(name, "ok", check(ctx))
            except AssertionError as failure:  # expect(): a figure outside its bound
                row = Row(name, "FAIL", str(failure))
            except Exception as err:  # noqa: BLE001 - one broken check must not stop the others
                where = traceback.extract_tb(err.__traceback__)[-1]
                message = (str(err).strip().splitlines() or [""])[0]
                row = Row(name, "error", f"{type(err).__name__}: {message} ({Path(where.filename).name}:{where.lineno})")
            row.seconds = time.perf_counter() - start
        print(f"  {row.name}: {row.status} ({row.seconds:.1f} s)", flush=True)
        results.append(row)
    return results


def table(rows: list[Row]) -> str:
    lines = [("check", "result", "seconds", "figures"), *[(r.name, r.status, f"{r.seconds:.1f}", r.detail) for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    lines.insert(1, tuple("-" * width for width in widths) + ("-" * 7,))
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths)) + "  " + line[3]
                     for line in lines)


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if torch is None:
        print(f"gpu_check: PyTorch is not installed for {sys.executable}; nothing was run")
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU available (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "nothing was run")
        return 0
    if MISSING:
        print(f"gpu_check: {MISSING} (for {sys.executable}: the checks need PyTorch, NumPy, transformers and "
              "what they install); nothing was run", file=sys.stderr)
        return 1
    if args.device == "cpu" and not args.tiny:
        print("gpu_check: --device cpu runs only with --tiny (it tests this script, not the machine)", file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else FULL
    try:
        rows = select(plan(sizes), args.only, args.skip)
    except ValueError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:  # DDP and the trainer want an index
        device = torch.device("cuda", torch.cuda.current_device())
    try:
        import transformers
        hf_version = transformers.__version__
    except ImportError:
        hf_version = "not importable"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (self-test)"
    print(f"gpu_check on {name}: torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {hf_version}, "
          f"{'toy' if args.tiny else 'full'} sizes, {len(rows)} checks", flush=True)
    trainer_log = logging.getLogger("run_multi_task")
    level = trainer_log.level
    trainer_log.setLevel(logging.ERROR)  # the steps these checks skip on purpose are not news
    try:
        results = run_checks(Context(device, sizes), rows, args.budget)
    finally:
        trainer_log.setLevel(level)
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n", encoding="utf-8")
    return 1 if any(r.status in ("FAIL", "error") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
