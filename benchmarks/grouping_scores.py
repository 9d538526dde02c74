"""Scores with length-grouped batches against plain shuffling, in the demo's setting.

The demo's run (demo.TRAINING_FLAGS: PALs on MiniLM, all eight tasks, annealed sampling;
the table in benchmarks/README.md was measured when they were 3 epochs x 100 steps of 32)
for several seeds, once with the default length-grouped batches and once with
--no_group_by_length, the same steps otherwise; prints the best GLUE average (and each
task's best-epoch score) per seed and the mean and spread of both.

    python benchmarks/grouping_scores.py                 # seeds 1 2 3 (about 20 minutes on 2 cores)
    python benchmarks/grouping_scores.py --seeds 1 2 3 4 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import demo  # noqa: E402
import demo_data  # noqa: E402

VARIANTS = {"grouped": [], "plain": ["--no_group_by_length"]}


def flags_for_seed(seed: int) -> list[str]:
    return [f for f in demo.TRAINING_FLAGS if f != "--do_predict"] + ["--seed", str(seed)]


def run(data_dir: Path, output_dir: Path, seed: int, extra: list[str]) -> dict:
    weights = demo.minilm_dir()
    command = [sys.executable, str(ROOT / "run_multi_task.py"), "--data_dir", str(data_dir),
               "--bert_config_file", str(demo.CONFIG), "--vocab_file", str(weights / "vocab.txt"),
               "--init_checkpoint", str(weights), "--output_dir", str(output_dir), "--no_plot",
               "--no_save_adapters", *flags_for_seed(seed), *extra]
    finished = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if finished.returncode != 0:
        raise RuntimeError(f"run failed: {finished.stderr[-2000:]}")
    return json.loads((output_dir / "eval_results.json").read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bert-pals-grouping-") as tmp:
        tmp = Path(tmp)
        demo_data.write_demo_glue(tmp / "data", seed=0)
        for index, seed in enumerate(args.seeds):
            names = list(VARIANTS) if index % 2 == 0 else list(VARIANTS)[::-1]
            for variant in names:
                best = run(tmp / "data", tmp / f"{variant}_{seed}", seed, VARIANTS[variant])
                results[variant].append(best)
                print(f"  seed {seed} {variant}: GLUE average {best['glue_average']:.4f} (epoch {best['epoch']})",
                      flush=True)
    tasks = list(results["grouped"][0]["scores"])
    print(f"\nDemo setting (demo.py flags), seeds {args.seeds}: best GLUE average per seed, their mean and "
          "spread, then each task's score at the best epoch, mean over the seeds\n")
    print("| batches | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean | spread (max-min) | "
          + " | ".join(tasks) + " |")
    print("|---|" + "---|" * (len(args.seeds) + 2 + len(tasks)))
    for variant, runs in results.items():
        averages = [r["glue_average"] for r in runs]
        per_task = [statistics.mean(r["scores"][t] for r in runs) for t in tasks]
        print(f"| {variant} | " + " | ".join(f"{a:.3f}" for a in averages)
              + f" | {statistics.mean(averages):.3f} | {max(averages) - min(averages):.3f} | "
              + " | ".join(f"{s:.3f}" for s in per_task) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
