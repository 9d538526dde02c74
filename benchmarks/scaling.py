"""The cost as work grows: training-step time and peak memory against sequence length.

MiniLM (real weights), BertForSequenceClassification, fp32, dropout 0.1 (training
mode), forward + backward + BERTAdam on a full batch (no padding: every position is
real), at sequence lengths 64, 128, 256 and 512 and batches of 8 to 64 (up to 8,192
tokens a step, so that the largest fits in memory beside other work): ours against
transformers with SDPA and with eager attention, runs alternated, median (min-max)
of 3 timed rounds; peak memory from the profiler's memory timeline (bench.py's
``peak_step_memory``) on one untimed step.

Writes a table and benchmarks/scaling.png. Attention keeps [B, heads, T, T] tensors
for backward wherever it is written out (ours with dropout, eager, and SDPA's math
fallback); the table flags the points where doubling T more than doubles a side's
peak memory at the same batch, i.e. where that quadratic part dominates.

    python benchmarks/scaling.py            # about 10 minutes on 2 cores
    python benchmarks/scaling.py --quick    # lengths 64 and 128 only
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench  # noqa: E402

LENGTHS = (64, 128, 256, 512)
BATCHES = (8, 16, 32, 64)
MAX_TOKENS = 8192
NAMES = ("ours", *bench.HF_NAMES)
PLOT_FILE = HERE / "scaling.png"


def grid(lengths) -> list[tuple[int, int]]:
    return [(t, b) for t in lengths for b in BATCHES if t * b <= MAX_TOKENS]


def full_batch(batch: int, length: int, vocab_size: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(1000, vocab_size, (batch, length), generator=gen)
    ids[:, 0], ids[:, -1] = 101, 102
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    return {"input_ids": ids, "segment_ids": types, "input_mask": torch.ones_like(ids),
            "label_ids": torch.randint(0, 2, (batch,), generator=gen)}


FIXED = (8, 1)  # (T, B) of the step whose peak memory counts as the fixed part (gradients, optimizer)


def measure(points: list[tuple[int, int]], repeats: int) -> dict[tuple[int, int], bench.StepResult]:
    """Every point's StepResult; the one at FIXED holds only memory (the part that does
    not grow with the batch: gradients and the optimizer's temporaries)."""
    models = bench.classifier_models("minilm")
    optimizers = {}
    for name, model in models.items():
        model.train()
        optimizers[name] = bench.new_optimizer(model)
    tiny = full_batch(FIXED[1], FIXED[0], models["ours"].config.vocab_size)
    results = {FIXED: bench.StepResult({}, {name: bench.peak_step_memory(
        bench.make_step(models[name], name != "ours", tiny, "fp32", optimizers[name])) for name in NAMES})}
    for length, batch_size in points:
        batch = full_batch(batch_size, length, models["ours"].config.vocab_size)
        steps = {name: bench.make_step(models[name], name != "ours", batch, "fp32", optimizers[name])
                 for name in NAMES}
        results[(length, batch_size)] = bench.benchmark_steps(steps, repeats, memory=True)
        r = results[(length, batch_size)]
        print(f"  T {length} B {batch_size}: " + ", ".join(
            f"{n} {r.median(n):.3f} s {bench.fmt_mb(r.memory[n])} MiB" for n in NAMES), flush=True)
        gc.collect()
    return results


def attention_mib(batch: int, length: int, heads: int = 12) -> float:
    """One fp32 [B, heads, T, T] tensor."""
    return batch * heads * length * length * 4 / 2 ** 20


def activations(results, length: int, batch: int, name: str) -> int | None:
    """Peak memory of the step above the fixed part: what grows with the batch."""
    peak, fixed = results[(length, batch)].memory.get(name), results[FIXED].memory.get(name)
    return None if peak is None or fixed is None else peak - fixed


def growth(results, length: int, batch: int, name: str) -> float | None:
    """Activation memory at (length, batch) over that at (length / 2, batch)."""
    if (length // 2, batch) not in results:
        return None
    here, half = activations(results, length, batch, name), activations(results, length // 2, batch, name)
    return here / half if here and half else None


def report(results, repeats: int, others: float, command: str) -> str:
    rows = []
    fixed = results[FIXED].memory
    for (length, batch), r in results.items():
        if (length, batch) == FIXED:
            continue
        flags = []
        cells = [str(length), str(batch)]
        cells += [bench.spread(r.times[n]) for n in NAMES]
        cells.append(bench.spread(r.ratios("ours", r.fastest_hf()), "{:.2f}"))
        for name in NAMES:
            g = growth(results, length, batch, name)
            cells.append(bench.fmt_mb(activations(results, length, batch, name)) + ("" if g is None else f" (x{g:.1f})"))
            if g is not None and g > 2.2:
                flags.append(name.replace("hf_", "HF "))
        cells.append(f"{attention_mib(batch, length):,.0f}")
        cells.append(", ".join(flags) if flags else "")
        rows.append(cells)
    return "\n".join([
        f"command: `{command}`  ",
        f"machine: {bench.cpu_description()}; CPU used by other processes: {others:.2f} cores  ",
        "MiniLM (real weights), fp32, dropout 0.1, full batches (no padding), forward + backward + BERTAdam; "
        f"seconds per step, median (min-max) of {repeats} rounds, runs alternated; *activation MiB*: the peak "
        "tensor memory of the step above what existed before it, less the part that does not grow with the "
        f"batch (gradients, optimizer temporaries: the peak of a {FIXED[1]} x {FIXED[0]} step, ours "
        f"{bench.fmt_mb(fixed.get('ours'))}, HF sdpa {bench.fmt_mb(fixed.get('hf_sdpa'))}, HF eager "
        f"{bench.fmt_mb(fixed.get('hf_eager'))} MiB); (xN): over the same batch at half the length (2 = linear "
        "in T); *[B,12,T,T] MiB*: one fp32 attention-probability tensor of one layer; *quadratic*: the sides "
        "whose activation memory more than doubles (x > 2.2) when T doubles",
        "",
        bench.table(["T", "B", "ours s", "HF sdpa s", "HF eager s", "ours/HF best", "ours activation MiB",
                     "HF sdpa activation MiB", "HF eager activation MiB", "[B,12,T,T] MiB", "quadratic"], rows),
    ])


def plot(full, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"ours": "-", "hf_sdpa": "--", "hf_eager": ":"}
    results = {k: v for k, v in full.items() if k != FIXED}
    batches = sorted({b for _, b in results})
    colors = dict(zip(batches, ["tab:blue", "tab:orange", "tab:green", "tab:red"]))
    for batch in batches:
        lengths = sorted(t for t, b in results if b == batch)
        for name in NAMES:
            label = f"{name.replace('hf_', 'HF ')}, B={batch}"
            ax_time.plot(lengths, [results[(t, batch)].median(name) for t in lengths], styles[name],
                         color=colors[batch], marker="o", label=label)
            memory = [activations(full, t, batch, name) for t in lengths]
            if all(memory):
                ax_mem.plot(lengths, [m / 2 ** 20 for m in memory], styles[name], color=colors[batch], marker="o",
                            label=label)
    for ax, title, unit in ((ax_time, "training step time", "seconds"), (ax_mem, "activation memory (peak less gradients)", "MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({t for t, _ in results}), [str(t) for t in sorted({t for t, _ in results})])
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(unit)
        ax.set_title(f"MiniLM fp32, dropout 0.1: {title}")
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.legend(fontsize=7, ncol=2)
    fig.suptitle(f"ours (solid) against transformers SDPA (dashed) and eager (dotted); {bench.cpu_name()}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="lengths 64 and 128 only (a check of the script)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per point (at least 3)")
    parser.add_argument("--plot", default=str(PLOT_FILE), help=f"where the PNG goes (default {PLOT_FILE})")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait (up to SECONDS) until other processes use under 0.2 cores")
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    args = parser.parse_args(argv)
    repeats = max(3, args.repeats)
    command = "python benchmarks/scaling.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    print(f"# {command}", flush=True)
    bench.wait_until_quiet(args.wait_quiet)
    meter = bench.OtherLoad()
    results = measure(grid(LENGTHS[:2] if args.quick else LENGTHS), repeats)
    text = report(results, repeats, meter.cores(), command)
    plot(results, Path(args.plot))
    print()
    print(text)
    print(f"\nplot: {args.plot}")
    if args.json:
        payload = {f"T{t} B{b}": {"times": r.times, "memory": r.memory} for (t, b), r in results.items()}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
