"""Where the time of a step goes, ours against transformers: torch.profiler by kind of operator.

Profiles, for MiniLM (real weights) on bench.py's real-text batches:

    train       the 32 x 128 training step with dropout 0 (forward + backward + BERTAdam)
    train-drop  the same step with dropout 0.1
    infer       one extract_features.py pass (length-grouped batches of 32, 4 layers out)

for our model and transformers' (SDPA and eager), each after warm-up steps, and prints
the self CPU time per kind of operator (matrix products, attention kernels, softmax,
LayerNorm, GELU, dropout, element-wise, copies, optimizer, other) per step, so that the
two sides can be compared line by line; ``--top N`` also lists the N most expensive
operators of each.

    python benchmarks/profile_step.py train infer --steps 3
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench  # noqa: E402

import extract_features  # noqa: E402

# Operator name -> kind; the first pattern contained in the name wins.
KINDS = (
    ("matrix products", ("addmm", "aten::mm", "aten::bmm", "baddbmm", "mkldnn_matmul", "aten::linear",
                         "aten::matmul")),
    ("attention kernel", ("scaled_dot_product", "_flash_attention", "_efficient_attention")),
    ("softmax", ("softmax",)),
    ("LayerNorm", ("layer_norm",)),
    ("GELU", ("gelu",)),
    ("dropout and masks", ("dropout", "bernoulli", "random_", "aten::ge", "aten::where", "masked_fill")),
    ("optimizer", ("adam", "_foreach", "lerp", "addcdiv", "addcmul", "aten::sqrt")),
    ("copies and layout", ("copy_", "aten::clone", "contiguous", "aten::cat", "aten::stack", "to_copy",
                           "aten::transpose", "aten::view", "aten::reshape", "aten::permute", "aten::expand",
                           "aten::empty", "aten::zeros", "aten::fill_", "aten::zero_", "aten::slice", "aten::select",
                           "aten::index", "aten::embedding", "aten::t", "aten::as_strided")),
    ("element-wise", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::sum", "aten::tanh",
                      "aten::neg", "aten::rsub", "aten::pow", "aten::mean", "aten::threshold", "nll_loss",
                      "aten::eq")),
)


def kind_of(name: str) -> str:
    for kind, patterns in KINDS:
        if any(p in name for p in patterns):
            return kind
    return "other"


def profile_runs(fn, steps: int) -> tuple[dict[str, float], list[tuple[str, float]], float]:
    """Self CPU milliseconds per kind and per operator, per step; wall ms per step."""
    fn()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    by_kind: dict[str, float] = defaultdict(float)
    by_op = []
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000 / steps
        by_kind[kind_of(event.key)] += ms
        by_op.append((event.key, ms))
    by_op.sort(key=lambda item: -item[1])
    total = sum(by_kind.values())
    return dict(by_kind), by_op, total


def workloads(which: str):
    batch, _ = bench.fixed_training_batch()
    if which in ("train", "train-drop"):
        models = bench.classifier_models("minilm", dropout=which == "train-drop")
        runs = {}
        for name, model in models.items():
            model.train()
            runs[name] = bench.make_step(model, name != "ours", batch, "fp32", bench.new_optimizer(model))
        return runs
    models = bench.encoder_models("minilm")
    features = bench.mixed_features(512, seed=1, keep_tokens=True)
    batches = extract_features.length_grouped_batches(features, 32)
    layers = [-1, -2, -3, -4]
    cpu = torch.device("cpu")
    runs = {"ours": lambda: [extract_features.encode_batch(models["ours"], b, layers, cpu, 0, False)
                             for b in batches]}
    for name in bench.HF_NAMES:
        runs[name] = lambda m=models[name]: [bench.hf_encode_batch(m, b, layers, False) for b in batches]
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="+", choices=("train", "train-drop", "infer"))
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (or passes) per model")
    parser.add_argument("--top", type=int, default=0, help="also list the N most expensive operators")
    args = parser.parse_args(argv)
    print(f"machine: {bench.cpu_description()}")
    for which in args.what:
        runs = workloads(which)
        profiles = {name: profile_runs(fn, args.steps) for name, fn in runs.items()}
        names = list(runs)
        kinds = [k for k, _ in KINDS] + ["other"]
        rows = []
        for kind in kinds:
            cells = [f"{profiles[n][0].get(kind, 0.0):,.0f} ({profiles[n][0].get(kind, 0.0) / profiles[n][2]:.0%})"
                     for n in names]
            rows.append([kind, *cells])
        rows.append(["**total (self CPU ms)**", *[f"**{profiles[n][2]:,.0f}**" for n in names]])
        print(f"\n{which}: self CPU milliseconds per step (share of the total) by kind of operator "
              f"({args.steps} steps profiled; with 2 threads, CPU time can exceed wall time)\n")
        print(bench.table(["kind", *[n.replace("hf_", "HF ") for n in names]], rows))
        if args.top:
            for name in names:
                print(f"\n{which}, {name}: top {args.top} operators (self CPU ms per step)")
                for op, ms in profiles[name][1][:args.top]:
                    print(f"  {ms:9.1f}  {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
