"""A full disk, and every other failure to write, ends in one clear line with nothing lost.

Two ways to make a write fail part-way, both below the code under test:

* ``FillingDisk``: the disk fills while one chosen file is written. ``open`` is
  replaced for the test by one whose files, for that file's temporary name only, are an
  ``io.FileIO`` that writes the bytes that fit and then fails with ENOSPC, as write(2)
  does on a full disk. The writers above it (torch.save, safetensors, Python text
  files) run unchanged.
* ``RLIMIT_FSIZE`` (``ulimit -f``) on a subprocess, with SIGXFSZ ignored: the kernel
  refuses writes past the limit with EFBIG, so torch's own error (``RuntimeError:
  [enforce fail at inline_container.cc] ... unexpected pos``), safetensors' own
  ``SafetensorError`` and Python's OSError reach the scripts as they would on a
  cluster with a file-size limit.

Each case checks: exit status 2, exactly one ``error:`` line (no traceback) naming
the file, why, and what is intact; the previous file intact and loadable; no
temporary file left; and that --resume (or simply running again) works after.

Everything runs on a tiny BERT (hidden 32, two layers, a vocabulary of the demo data's
words), one thread, so a run takes seconds.
"""
from __future__ import annotations

import builtins
import errno
import io
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpointing
import convert_tf_checkpoint_to_pytorch as convert
import demo_data
import predict
import run_multi_task
import tokenization
from errors import Error

REPO_ROOT = Path(__file__).resolve().parent.parent
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EXIT_ERROR = 2


# ---------------------------------------------------------------------------------------
# Tiny inputs
# ---------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def one_thread_and_fresh_logging():
    """One thread (the machine is shared; a tiny model gains nothing from more), and
    logging handlers removed after each in-process run (each script sets up its own)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The demo GLUE data, a vocabulary of its words and a tiny PALs config."""
    folder = tmp_path_factory.mktemp("inputs")
    demo_data.write_demo_glue(folder / "glue", seed=3, scale=0.3)
    basic = tokenization.BasicTokenizer(do_lower_case=True)
    words = set()
    for path in (folder / "glue").rglob("*.tsv"):
        words.update(basic.tokenize(path.read_text(encoding="utf-8")))
    vocab = SPECIAL_TOKENS + sorted(words - set(SPECIAL_TOKENS))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, hidden_dropout_prob=0.1,
                  attention_probs_dropout_prob=0.1, mult=True, pals=True, hidden_size_aug=12)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def train_args(inputs: Path, output_dir: Path, *extra) -> list[str]:
    """One epoch of four steps on cola and sts, a checkpoint every two steps."""
    return [str(a) for a in [
        "--data_dir", inputs / "glue", "--bert_config_file", inputs / "config.json",
        "--vocab_file", inputs / "vocab.txt", "--output_dir", output_dir, "--tasks", "cola,sts",
        "--do_lower_case", "--max_seq_length", "32", "--train_batch_size", "4", "--eval_batch_size", "16",
        "--seed", "7", "--no_plot", "--do_train", "--do_eval", "--num_train_epochs", "1",
        "--steps_per_epoch", "4", "--save_checkpoints_steps", "2", "--learning_rate", "1e-3",
        "--keep_last_checkpoint", *extra]]


def resume_args(output_dir: Path, *extra) -> list[str]:
    """--resume takes every other argument from the run's args.json."""
    return ["--output_dir", str(output_dir), "--resume", *map(str, extra)]


@pytest.fixture(scope="module")
def model_dir(inputs, tmp_path_factory):
    """A finished tiny run: the model predict.py reads."""
    output_dir = tmp_path_factory.mktemp("model") / "out"
    torch.set_num_threads(1)
    assert run_multi_task.main(train_args(inputs, output_dir)) == 0
    logging.getLogger().handlers.clear()
    return output_dir


# ---------------------------------------------------------------------------------------
# Checks shared by every case
# ---------------------------------------------------------------------------------------

def the_error_line(stderr: str) -> str:
    """The one ``error:`` line, last on stderr, with no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == errors[0], stderr[-3000:]
    return errors[0]


def assert_says(line: str, *fragments) -> None:
    for fragment in fragments:
        assert str(fragment) in line, f"{fragment!r} not in {line!r}"


def assert_no_temporary_files(folder: Path) -> None:
    partial = [p for p in Path(folder).rglob("*") if checkpointing.is_partial_file(p)]
    assert not partial, partial


def checkpoint_step(output_dir: Path) -> int:
    return int(checkpointing.load_training_checkpoint(output_dir)["global_step"])


# ---------------------------------------------------------------------------------------
# A disk that fills while one chosen file is written
# ---------------------------------------------------------------------------------------

class _FillingFile(io.FileIO):
    """A file on a disk with ``room`` bytes left: the write that reaches the end writes
    what fits (a short count, as the kernel returns), the next one fails with ENOSPC."""

    def __init__(self, name, mode, room: int):
        super().__init__(name, mode)
        self.room = room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = super().write(data[:self.room])
        self.room -= written
        return written


class FillingDisk:
    """While active, the ``occurrence``-th time a temporary of ``name`` (``.name.*.tmp``,
    the atomic writer's) is opened for writing, the disk has ``room`` bytes left."""

    def __init__(self, monkeypatch, name: str, room: int, occurrence: int = 1):
        self.name, self.room, self.occurrence = name, room, occurrence
        self.opened = 0
        self.real_open = builtins.open
        monkeypatch.setattr(builtins, "open", self.open)
        monkeypatch.setattr(io, "open", self.open)  # pathlib's write_text and write_bytes use io.open

    def _is_target(self, file, mode: str) -> bool:
        if not isinstance(file, (str, os.PathLike)) or not set(mode) & set("wax"):
            return False
        path = Path(os.fsdecode(file))
        if not (checkpointing.is_partial_file(path) and path.name.startswith(f".{self.name}.")):
            return False
        self.opened += 1
        return self.opened == self.occurrence

    def open(self, file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True,
             opener=None):
        if not self._is_target(file, mode):
            return self.real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        raw = _FillingFile(file, mode.replace("b", "").replace("t", ""), self.room)
        if "b" in mode and buffering == 0:
            return raw
        buffered = io.BufferedWriter(raw)
        if "b" in mode:
            return buffered
        return io.TextIOWrapper(buffered, encoding=encoding, errors=errors, newline=newline)


def test_disk_full_while_writing_the_training_checkpoint(inputs, tmp_path, monkeypatch, capsys):
    """The disk fills 1000 bytes into the second checkpoint (step 4): the checkpoint of
    step 2 stays, and --resume goes on from it."""
    out = tmp_path / "out"
    FillingDisk(monkeypatch, "last.pt", room=1000, occurrence=2)
    code = run_multi_task.main(train_args(inputs, out))
    monkeypatch.undo()
    line = the_error_line(capsys.readouterr().err)
    assert code == EXIT_ERROR
    last = out / "checkpoints" / "last.pt"
    assert_says(line, f"could not write {last}: no space left on device, about ",
                f"the checkpoint of step 2 in {last} is intact: free space and add --resume")
    assert checkpoint_step(out) == 2  # the previous checkpoint, whole
    needed = re.search(r"about ([\d.]+) (KB|MB) needed", line)
    needed = float(needed.group(1)) * {"KB": 1e3, "MB": 1e6}[needed.group(2)]
    assert 0.9 < needed / last.stat().st_size < 1.1, line  # the new checkpoint is as large as the old
    assert_no_temporary_files(out)

    assert run_multi_task.main(resume_args(out)) == 0
    assert "resumed from step 2 " in capsys.readouterr().err
    assert checkpoint_step(out) == 4
    assert (out / "checkpoints" / "finished.json").is_file()


def test_disk_full_while_writing_the_adapter_files(inputs, tmp_path, monkeypatch, capsys):
    """The disk fills in the second task's adapter file: no adapter file and no part of
    the best model is published (never a half set that looks complete); --resume
    writes them all."""
    out = tmp_path / "out"
    FillingDisk(monkeypatch, "sts.safetensors", room=100)
    code = run_multi_task.main(train_args(inputs, out))
    monkeypatch.undo()
    line = the_error_line(capsys.readouterr().err)
    assert code == EXIT_ERROR
    published = sorted(p.name for p in out.rglob("*") if p.is_file() and not checkpointing.is_partial_file(p))
    for name in ("cola.safetensors", "sts.safetensors", "best_model.pth", "eval_results.json"):
        assert name not in published, published
    last = out / "checkpoints" / "last.pt"
    assert_says(line, f"could not write {out / 'adapters' / 'sts.safetensors'}: no space left on device",
                "no file of the set written with it was replaced",
                f"the checkpoint of step 4 in {last} is intact: free space and add --resume")
    assert checkpoint_step(out) == 4
    assert_no_temporary_files(out)

    assert run_multi_task.main(resume_args(out)) == 0
    adapters = [out / "adapters" / "cola.safetensors", out / "adapters" / "sts.safetensors"]
    model, tasks = checkpointing.build_model_from_adapters(out / "best_model.pth", adapters)
    assert tasks == ["cola", "sts"]
    best = checkpointing.load_model_folder(out).model.state_dict()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, best[key]), key  # the adapters and the best model: one set


def test_disk_full_while_replacing_an_adapter_set_keeps_the_previous_set(tmp_path, inputs, monkeypatch):
    """The library call on its own: an earlier set stays byte for byte when the disk
    fills in the second file of the next one."""
    import modeling
    config = modeling.BertConfig.from_json_file(inputs / "config.json").replace(num_tasks=2)
    folder = tmp_path / "adapters"
    torch.manual_seed(0)
    checkpointing.save_adapter_checkpoints(modeling.BertForMultiTask(config, [2, 1]), ["cola", "sts"], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    torch.manual_seed(1)
    newer = modeling.BertForMultiTask(config, [2, 1])
    FillingDisk(monkeypatch, "sts.safetensors", room=100)
    with pytest.raises(Error, match=r"could not write .*sts\.safetensors: no space left on device"):
        checkpointing.save_adapter_checkpoints(newer, ["cola", "sts"], folder)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_disk_full_while_writing_predictions(model_dir, tmp_path, monkeypatch, capsys):
    input_file = tmp_path / "in.txt"
    input_file.write_text("".join(f"sentence number {k} is here\n" for k in range(60)), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    output.write_text("previous predictions\n", encoding="utf-8")
    argv = ["--model_dir", str(model_dir), "--input_file", str(input_file), "--output_file", str(output),
            "--task", "cola", "--batch_size", "8"]
    FillingDisk(monkeypatch, "out.jsonl", room=500)
    code = predict.main(argv)
    monkeypatch.undo()
    line = the_error_line(capsys.readouterr().err)
    assert code == EXIT_ERROR
    assert_says(line, f"could not write {output}: no space left on device after 500 bytes were written",
                "the previous out.jsonl is unchanged")
    assert output.read_text(encoding="utf-8") == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.jsonl"]

    assert predict.main(argv) == 0
    assert len(output.read_text(encoding="utf-8").splitlines()) == 60


# ---------------------------------------------------------------------------------------
# A file-size limit (RLIMIT_FSIZE): the libraries' own errors
# ---------------------------------------------------------------------------------------

def run_script(script: str, argv, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """A script in its own process, one thread, optionally under ``ulimit -f``."""
    def limit():
        if file_size_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(2) instead of a killed process
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, str(REPO_ROOT / script), *map(str, argv)], capture_output=True,
                          text=True, cwd=REPO_ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), preexec_fn=limit,
                          timeout=300)


@pytest.fixture
def stopped_at_step_2(inputs, tmp_path, monkeypatch):
    """A run folder whose checkpoint is of step 2: the run stopped at step 3, whose loss
    the test turns into NaN (the run refuses to go on; any stop would do)."""
    import modeling
    import training
    train_step, forward = training.Trainer.train_step, modeling.BertForMultiTask.forward
    step = {"now": 0}

    def counting_train_step(self, task_id):
        step["now"] = self.global_step + 1
        return train_step(self, task_id)

    def nan_at_step_3(self, *args, labels=None, **kwargs):
        output = forward(self, *args, labels=labels, **kwargs)
        if labels is not None and self.training and step["now"] == 3:
            return output[0] * float("nan"), output[1]
        return output

    monkeypatch.setattr(training.Trainer, "train_step", counting_train_step)
    monkeypatch.setattr(modeling.BertForMultiTask, "forward", nan_at_step_3)
    out = tmp_path / "out"
    assert run_multi_task.main(train_args(inputs, out)) == EXIT_ERROR
    monkeypatch.undo()
    logging.getLogger().handlers.clear()
    assert checkpoint_step(out) == 2
    return out


@pytest.mark.slow
def test_file_size_limit_while_writing_the_training_checkpoint(stopped_at_step_2):
    """torch's own error (its zip writer's RuntimeError): the checkpoint of step 2 stays."""
    out = stopped_at_step_2
    last = out / "checkpoints" / "last.pt"
    limit = last.stat().st_size // 2  # the model and config files fit, the checkpoint does not
    result = run_script("run_multi_task.py", resume_args(out), file_size_limit=limit)
    line = the_error_line(result.stderr)
    assert result.returncode == EXIT_ERROR, result.stderr[-3000:]
    assert_says(line, f"could not write {last}: file too large: this process may write files of at most "
                      f"{checkpointing.format_bytes(limit)} (ulimit -f)",
                f"the checkpoint of step 2 in {last} is intact: remove the cause and add --resume")
    assert checkpoint_step(out) == 2
    assert_no_temporary_files(out)

    assert run_multi_task.main(resume_args(out)) == 0  # without the limit
    assert checkpoint_step(out) == 4


@pytest.mark.slow
def test_file_size_limit_while_writing_the_best_model_and_adapters(stopped_at_step_2):
    """The best model's set (best_model.pth, the adapter files, eval_results.json)
    under a limit that best_model.pth exceeds: nothing of the set is published."""
    out = stopped_at_step_2
    limit = 100_000  # best_model.pth of the tiny model is about 330 KB
    result = run_script("run_multi_task.py", resume_args(out, "--save_checkpoints_steps", 0),
                        file_size_limit=limit)
    line = the_error_line(result.stderr)
    assert result.returncode == EXIT_ERROR, result.stderr[-3000:]
    assert_says(line, f"could not write {out / 'best_model.pth'}: file too large",
                f"the checkpoint of step 2 in {out / 'checkpoints' / 'last.pt'} is intact")
    assert not (out / "best_model.pth").exists() and not (out / "adapters").exists()
    assert checkpoint_step(out) == 2
    assert_no_temporary_files(out)

    assert run_multi_task.main(resume_args(out)) == 0  # without the limit
    adapters = [out / "adapters" / "cola.safetensors", out / "adapters" / "sts.safetensors"]
    assert checkpointing.build_model_from_adapters(out / "best_model.pth", adapters)[1] == ["cola", "sts"]


@pytest.mark.slow
def test_file_size_limit_while_writing_predictions(model_dir, tmp_path):
    input_file = tmp_path / "in.txt"
    input_file.write_text("".join(f"sentence number {k} is here\n" for k in range(60)), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    output.write_text("previous predictions\n", encoding="utf-8")
    argv = ["--model_dir", model_dir, "--input_file", input_file, "--output_file", output, "--task", "cola"]
    result = run_script("predict.py", argv, file_size_limit=2000)
    line = the_error_line(result.stderr)
    assert result.returncode == EXIT_ERROR, result.stderr[-3000:]
    assert_says(line, f"could not write {output}: file too large: this process may write files of at most "
                      f"2.0 KB (ulimit -f)", "the previous out.jsonl is unchanged")
    assert output.read_text(encoding="utf-8") == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.jsonl"]

    assert predict.main([str(a) for a in argv]) == 0  # without the limit
    assert len(output.read_text(encoding="utf-8").splitlines()) == 60


@pytest.mark.slow
def test_file_size_limit_while_converting_to_safetensors(google_tiny_ckpt_dir, tmp_path):
    """safetensors' own error (SafetensorError, written by its Rust code)."""
    output = tmp_path / "tiny.safetensors"
    argv = ["--tf_checkpoint_path", google_tiny_ckpt_dir / "bert_model.ckpt",
            "--bert_config_file", google_tiny_ckpt_dir / "bert_config.json", "--pytorch_dump_path", output]
    result = run_script("convert_tf_checkpoint_to_pytorch.py", argv, file_size_limit=1000)
    line = the_error_line(result.stderr)
    assert result.returncode == EXIT_ERROR, result.stderr[-3000:]
    assert_says(line, f"could not write {output}: file too large: this process may write files of at most "
                      f"1.0 KB (ulimit -f)", "no partial tiny.safetensors was left behind")
    assert list(tmp_path.iterdir()) == []
    assert convert.main([str(a) for a in argv]) == 0


# ---------------------------------------------------------------------------------------
# The start of a run: enough space for its checkpoints and best model?
# ---------------------------------------------------------------------------------------

def test_the_space_estimate_matches_the_files_a_run_writes(model_dir):
    """The estimate from the parameters against the files of the finished run."""
    import modeling
    config = modeling.BertConfig.from_json_file(model_dir / "config.json").replace(num_tasks=2)
    estimate = checkpointing.estimate_run_space(modeling.BertForMultiTask(config, [2, 1]))
    last = (model_dir / "checkpoints" / "last.pt").stat().st_size
    best = (model_dir / "best_model.pth").stat().st_size
    adapters = sum(p.stat().st_size for p in (model_dir / "adapters").iterdir())
    assert 0.9 * last < estimate.checkpoint < 1.1 * last, (estimate, last)
    assert 0.9 * best < estimate.best_model < 1.1 * best, (estimate, best)
    assert 0.9 * adapters < estimate.adapters < 1.1 * adapters, (estimate, adapters)


def test_a_run_warns_at_its_start_when_free_space_is_short(inputs, tmp_path, monkeypatch, capsys):
    """The output folder's file system reports 1000 bytes free (shutil.disk_usage, the
    system's answer, is what the test replaces): one warning line, and the run goes on."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    assert run_multi_task.main(train_args(inputs, tmp_path / "out")) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "free, but this run" in line]
    assert len(warnings) == 1, warnings
    assert_says(warnings[0], f"{tmp_path / 'out'}: 1.0 KB free, but this run's checkpoints and best model "
                             f"need about ", "checkpoints/last.pt", "best_model.pth", "choose another --output_dir")


# ---------------------------------------------------------------------------------------
# The log file on a full disk
# ---------------------------------------------------------------------------------------

def test_a_log_file_on_a_full_disk_costs_one_warning_line(tmp_path, capsys):
    """Without it, logging prints '--- Logging error ---' and a traceback per record."""
    import cli
    log_file = tmp_path / "train.log"
    cli.setup_logging(log_file)
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler))
    handler.stream.close()
    handler.stream = io.TextIOWrapper(io.BufferedWriter(_FillingFile(log_file, "a", room=0)),
                                      encoding="utf-8", write_through=True)
    for number in range(3):
        logging.getLogger("run_multi_task").info("line %d", number)
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {log_file}: log lines cannot be written (no space left on device); from now "
                        f"on they go to stderr only"], stderr
    for number in range(3):  # every record still reaches stderr
        assert any(line.endswith(f"run_multi_task: line {number}") for line in stderr.splitlines()), stderr
    handler.close()  # what the first write refused is not written at the end either, and says nothing
