"""What a step of ``make demo`` costs, and the least time its 1,200 steps can take here.

Runs demo.py's training (its data, flags and weights) through run_multi_task.py for
``--steps`` steps and stops. Steps alternate: the even ones run under torch's
FlopCounterMode (its count of every matrix product, forward and backward), the odd ones
are timed, with BERTAdam's share timed apart. Then square fp32 matmuls give this CPU's
rate. The floor assumes every FLOP at that rate and the optimizer as it is (it only
streams memory): steps x (GFLOP per step / matmul rate + optimizer seconds per step).

    python benchmarks/demo_cost.py              # 200 steps (about 2.5 minutes)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import demo  # noqa: E402
import demo_data  # noqa: E402
import optimization  # noqa: E402
import run_multi_task  # noqa: E402
import training  # noqa: E402


def _flag(name: str) -> int:
    return int(demo.TRAINING_FLAGS[demo.TRAINING_FLAGS.index(name) + 1])


DEMO_STEPS = _flag("--num_train_epochs") * _flag("--steps_per_epoch")  # 4 x 300


class Stop(Exception):
    """Raised by the spy once enough steps are measured."""


def measure(steps: int, seed: int) -> dict[str, float]:
    """GFLOP per step (counted steps), seconds per step and the optimizer's seconds
    per step (timed steps), over ``steps`` demo steps."""
    flops, step_s, optimizer_s = [], [], []
    train_step, optimizer_step = training.Trainer.train_step, optimization.BERTAdam.step

    def timed_optimizer(self, *args, **kwargs):
        start = time.perf_counter()
        result = optimizer_step(self, *args, **kwargs)
        if len(optimizer_s) > len(step_s):  # inside a timed step
            optimizer_s[-1] += time.perf_counter() - start
        return result

    def spy(self, task_id):
        if (len(flops) + len(step_s)) % 2 == 0:
            with FlopCounterMode(display=False) as counter:
                loss = train_step(self, task_id)
            flops.append(counter.get_total_flops())
        else:
            optimizer_s.append(0.0)
            start = time.perf_counter()
            loss = train_step(self, task_id)
            step_s.append(time.perf_counter() - start)
        if len(flops) + len(step_s) == steps:
            raise Stop
        return loss

    data_dir = ROOT / "demo_data"
    demo_data.write_demo_glue(data_dir, seed=0)
    weights = demo.minilm_dir()
    flags = [flag for flag in demo.TRAINING_FLAGS if flag not in ("--do_predict", "--do_eval")]
    training.Trainer.train_step, optimization.BERTAdam.step = spy, timed_optimizer
    try:
        with tempfile.TemporaryDirectory(prefix="bert-pals-demo-cost-") as out:
            run_multi_task.main(["--data_dir", str(data_dir), "--bert_config_file", str(demo.CONFIG),
                                 "--vocab_file", str(weights / "vocab.txt"), "--init_checkpoint", str(weights),
                                 "--output_dir", out, *flags, "--seed", str(seed), "--no_plot"])
    except Stop:
        pass
    finally:
        training.Trainer.train_step, optimization.BERTAdam.step = train_step, optimizer_step
    return {"gflop": statistics.mean(flops) / 1e9, "step_s": statistics.mean(step_s),
            "optimizer_s": statistics.mean(optimizer_s)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="demo steps measured (half counted, half timed)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    found = measure(args.steps, args.seed)
    peak = max(bench.measure_matmul_peaks(1024, 5)["fp32"])
    achieved = found["gflop"] / found["step_s"]
    arithmetic = DEMO_STEPS * found["gflop"] / peak
    optimizer = DEMO_STEPS * found["optimizer_s"]
    print(f"machine: {bench.cpu_description()}")
    print(f"demo step (mean of {args.steps // 2} counted, {args.steps - args.steps // 2} timed; seed {args.seed}): "
          f"{found['gflop']:.2f} GFLOP, {found['step_s'] * 1e3:.0f} ms ({found['optimizer_s'] * 1e3:.0f} ms "
          f"BERTAdam), {achieved:.1f} GFLOP/s")
    print(f"fp32 matmul rate (1024^3, best of 5): {peak:.1f} GFLOP/s; the steps reach {achieved / peak:.0%} of it")
    print(f"{DEMO_STEPS} steps: {DEMO_STEPS * found['step_s']:.0f} s as measured; floor {arithmetic + optimizer:.0f} s "
          f"= {arithmetic:.0f} s of FLOPs at the matmul rate + {optimizer:.0f} s of BERTAdam")
    return 0


if __name__ == "__main__":
    sys.exit(main())
