"""Files a training run writes and reads: atomic writes, the self-contained best model,
resumable training checkpoints and per-task adapter checkpoints; and the error and
signal handling the three command-line scripts share.

Every file is written to a temporary name in the same folder (``.<name>.<random>.tmp``),
flushed to disk and then renamed, so a crash never leaves a half-written file under
the real name. A process killed outright (SIGKILL, power loss) can leave its temporary
file behind; ``remove_partial_files`` clears those when the next run starts. Nothing
is ever unpickled with code execution: torch files are read with ``weights_only=True``.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

import modeling
from modeling import BertConfig, BertForMultiTask, CheckpointError

PathLike = Union[str, os.PathLike]


class UsageError(ValueError):
    """A command line the script cannot run (one-line message)."""


BEST_MODEL_FILE = "best_model.pth"  # the original's name
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
TASKS_FILE = "tasks.json"
TRAINING_CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT_FILE = "last.pt"
ADAPTER_DIR = "adapters"
SHARED_BERT_FILE = "shared_bert.safetensors"


# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------

TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: PathLike):
    """Yield a temporary path beside ``path``; on success flush it to disk and rename it
    onto ``path``. On any exception (or a signal turned into one) the temporary file is
    removed and ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600; use normal permissions
    try:
        yield Path(temporary)
        _fsync_file(temporary)  # the data is on disk before the name points at it
        os.replace(temporary, path)
        _fsync_directory(path.parent)  # ... and the rename itself survives a power loss
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _fsync_file(path: PathLike) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(folder: PathLike) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# mkstemp's names: the prefix, 8 characters from [a-z0-9_], the suffix.
_PARTIAL_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX) + "$")


def is_partial_file(path: PathLike) -> bool:
    """A temporary file of ``atomic_path`` (``.<name>.<8 random characters>.tmp``)."""
    return bool(_PARTIAL_NAME.match(Path(path).name))


def remove_partial_files(*folders: PathLike) -> List[Path]:
    """Delete the temporary files an outright-killed run (SIGKILL, power loss) left in
    ``folders`` (not their sub-folders).

    Only names of the ``atomic_path`` pattern are touched. Call it only while holding
    the output folder's ``OutputDirLock``, so no live run's temporary file is removed.
    """
    removed = []
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).glob(f".*{TEMPORARY_SUFFIX}")):
            if path.is_file() and is_partial_file(path):
                path.unlink()
                removed.append(path)
    return removed


class OutputDirLock:
    """An exclusive lock on an output folder, so two runs never write the same files.

    ``flock`` on ``<folder>/.lock``: released by the kernel when the process ends,
    however it ends (a SIGKILL leaves no stale lock).
    """

    FILE_NAME = ".lock"

    def __init__(self, folder: PathLike):
        self.path = Path(folder) / self.FILE_NAME
        self._handle = None

    def acquire(self) -> "OutputDirLock":
        import fcntl
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise UsageError(f"{self.path.parent}: another run is using this output folder "
                                 f"(pid {holder}); wait for it or choose another --output_dir") from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def atomic_copy(source: PathLike, path: PathLike) -> None:
    with atomic_path(path) as temporary:
        shutil.copyfile(source, temporary)


def safe_torch_load(path: PathLike) -> Any:
    """``torch.load`` that refuses anything but plain tensors and containers."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then refuses anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as err:
        raise CheckpointError(f"{path}: refused or unreadable checkpoint (only plain tensors are "
                              f"loaded, never code): {explain_torch_load_error(err)}") from None


_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def explain_torch_load_error(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words.

    torch's own message is several paragraphs and suggests retrying with
    ``weights_only=False``: exactly what must not be done with a file from a stranger.
    """
    text = str(err)
    if "Weights only load failed" in text:
        blocked = _BLOCKED_GLOBAL.search(text)
        if blocked:
            return (f"it holds a Python object ({blocked.group(1)}) that would run code when unpickled; "
                    f"do not load it with weights_only=False unless you trust its source")
        detail = next((line.strip() for line in text.splitlines()[1:]
                       if line.strip() and not line.startswith(("Please file", "Check the documentation"))),
                      "pickled data beyond plain tensors")
        return f"it holds pickled data beyond plain tensors ({detail.rstrip('.')})"
    if isinstance(err, EOFError) or "failed reading zip archive" in text or "file_size" in text:
        return "the file is empty, truncated or corrupt (not a complete torch file)"
    first = text.strip().split(". ")[0].splitlines()[0] if text.strip() else type(err).__name__
    return first


# --------------------------------------------------------------------------------------
# Command-line errors and stop signals, shared by the three scripts
# --------------------------------------------------------------------------------------

DEBUG_ENVIRONMENT_VARIABLE = "BERT_PALS_DEBUG"
EXIT_BAD_INPUT = 2


def debug_requested(flag: bool = False) -> bool:
    """``--debug``, or BERT_PALS_DEBUG set to anything but empty, 0, false, no or off."""
    value = os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "").strip().lower()
    return bool(flag) or value not in ("", "0", "false", "no", "off")


def error_line(err: BaseException) -> str:
    """The one line a script prints for an expected error."""
    if isinstance(err, OSError) and err.strerror:
        names = [n for n in (err.filename, err.filename2) if n is not None]
        where = " -> ".join(os.fsdecode(n) for n in names)
        text = f"{where}: {err.strerror}" if where else err.strerror
    else:
        text = str(err).strip() or type(err).__name__
    return "error: " + " ".join(line.strip() for line in text.splitlines() if line.strip())


def report_error(err: BaseException) -> int:
    print(error_line(err), file=sys.stderr)
    return EXIT_BAD_INPUT


class StopRequested(BaseException):
    """SIGTERM (or SIGINT) outside the training loop: unwind, removing temporary files.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` blocks do not
    swallow it; ``atomic_path`` removes its temporary file on the way out.
    """

    def __init__(self, signal_number: int):
        super().__init__(f"stopped by signal {signal_number}")
        self.signal_number = signal_number


@contextmanager
def stop_signals_raise():
    """Turn SIGINT and SIGTERM into ``StopRequested`` for the duration of the block.

    Without it, SIGTERM would end the process on the spot and leave temporary files;
    with it, the stack unwinds and every ``atomic_path`` cleans up after itself. The
    training loop installs its own handlers (checkpoint, then stop) inside this block.
    """
    def stop(signum, _frame):
        raise StopRequested(signum)

    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, stop)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def report_stop(err: BaseException) -> int:
    """Exit status 128 + signal number, as a shell reports a process ended by a signal."""
    signum = getattr(err, "signal_number", signal.SIGINT)
    print(f"stopped: signal {signum}; no partial files were left behind", file=sys.stderr)
    return 128 + int(signum)


# --------------------------------------------------------------------------------------
# The best model: a self-contained folder
# --------------------------------------------------------------------------------------

def save_model_folder(model: BertForMultiTask, task_names: Sequence[str], vocab_file: PathLike,
                      folder: PathLike) -> None:
    """best_model.pth (original keys, no ``module.``), config.json, vocab.txt, tasks.json."""
    folder = Path(folder)
    atomic_torch_save(model.state_dict(), folder / BEST_MODEL_FILE)
    atomic_write_text(folder / CONFIG_FILE, model.config.to_json_string())
    tasks = [{"name": name, "num_labels": n} for name, n in zip(task_names, model.num_labels)]
    atomic_write_text(folder / TASKS_FILE, json.dumps(tasks, indent=2) + "\n")
    if Path(vocab_file).resolve() != (folder / VOCAB_FILE).resolve():
        atomic_copy(vocab_file, folder / VOCAB_FILE)


def read_tasks_file(path: PathLike) -> List[Dict[str, Any]]:
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: task list not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a valid task list ({err})") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "name" in t and "num_labels" in t
                                              for t in tasks):
        raise CheckpointError(f"{path}: expected a list of {{\"name\", \"num_labels\"}} objects")
    return tasks


# --------------------------------------------------------------------------------------
# Random number generator states (serialisable with weights_only loading)
# --------------------------------------------------------------------------------------

def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states as plain data."""
    state = {
        "python": _to_plain(random.getstate()),
        "numpy": numpy_random_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    np.random.set_state(plain_to_numpy_random_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(value):
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value):
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value


def numpy_random_state_to_plain(state: tuple) -> Dict[str, Any]:
    """A ``RandomState.get_state()`` tuple as data that ``weights_only`` loading accepts."""
    return {"keys": torch.from_numpy(np.asarray(state[1]).astype(np.int64)), "pos": int(state[2]),
            "has_gauss": int(state[3]), "cached_gaussian": float(state[4])}


def plain_to_numpy_random_state(plain: Mapping[str, Any]) -> tuple:
    return ("MT19937", plain["keys"].numpy().astype(np.uint32), plain["pos"], plain["has_gauss"],
            plain["cached_gaussian"])


# --------------------------------------------------------------------------------------
# Training checkpoints
# --------------------------------------------------------------------------------------

def training_checkpoint_path(output_dir: PathLike) -> Path:
    return Path(output_dir) / TRAINING_CHECKPOINT_DIR / LAST_CHECKPOINT_FILE


def save_training_checkpoint(state: Mapping[str, Any], output_dir: PathLike,
                             keep_epoch_copy: Optional[int] = None) -> Path:
    """Write the resumable state atomically; optionally also as ``epoch_<n>.pt``."""
    path = training_checkpoint_path(output_dir)
    atomic_torch_save(dict(state), path)
    if keep_epoch_copy is not None:
        atomic_copy(path, path.parent / f"epoch_{keep_epoch_copy}.pt")
    return path


def load_training_checkpoint(output_dir: PathLike) -> Dict[str, Any]:
    path = training_checkpoint_path(output_dir)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint to resume from")
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "model" not in state or "global_step" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint of this script")
    return state


# --------------------------------------------------------------------------------------
# Adapter checkpoints: one small file per task
# --------------------------------------------------------------------------------------

def unique_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict with tied aliases collapsed to one key each.

    The PAL projections appear once per layer and once under ``encoder.mult_aug_dense``;
    the latter name is kept. Loading that one key fills every alias (same tensor).
    """
    kept: Dict[str, torch.Tensor] = {}
    by_storage: Dict[tuple, str] = {}
    for key, tensor in model.state_dict().items():
        identity = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if identity in by_storage:
            previous = by_storage[identity]
            if "encoder.layer." in previous and "encoder.layer." not in key:
                del kept[previous]
                kept[key] = tensor
                by_storage[identity] = key
            continue
        by_storage[identity] = key
        kept[key] = tensor
    return kept


def _renumber_task(key: str, new_index: Union[int, str]) -> str:
    match = modeling._TASK_INDEX.search(key)
    start, end = match.span(1)
    return f"{key[:start]}{new_index}{key[end:]}"


def task_state_dict(model: BertForMultiTask, task_id: int) -> Dict[str, torch.Tensor]:
    """The task's own parameters (adapters, LHUC, modules on top, head) under task index 0."""
    return {_renumber_task(key, 0): tensor.detach().contiguous().clone()
            for key, tensor in unique_state_dict(model).items()
            if modeling.task_of_key(key) == task_id}


def shared_state_dict(model: BertForMultiTask) -> Dict[str, torch.Tensor]:
    """Everything shared by all tasks: the BERT weights without any adapter."""
    return {key: tensor.detach().contiguous().clone() for key, tensor in unique_state_dict(model).items()
            if modeling.task_of_key(key) is None}


def save_adapter_checkpoints(model: BertForMultiTask, task_names: Sequence[str], folder: PathLike) -> List[Path]:
    """``adapters/<task>.safetensors`` per task plus ``adapters/shared_bert.safetensors``.

    Each task file carries its metadata (task name, number of labels, the config), so
    a multi-task model can be rebuilt from the shared BERT and any set of task files.
    """
    from safetensors.torch import save_file
    folder = Path(folder)
    written = []
    config_json = model.config.to_json_string()
    for task_id, name in enumerate(task_names):
        metadata = {"task": name, "num_labels": str(model.num_labels[task_id]), "config": config_json}
        path = folder / f"{name}.safetensors"
        with atomic_path(path) as temporary:
            save_file(task_state_dict(model, task_id), str(temporary), metadata=metadata)
        written.append(path)
    with atomic_path(folder / SHARED_BERT_FILE) as temporary:
        save_file(shared_state_dict(model), str(temporary), metadata={"config": config_json})
    written.append(folder / SHARED_BERT_FILE)
    return written


def _read_safetensors(path: PathLike):
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: adapter checkpoint not found") from None
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    return tensors, metadata


def build_model_from_adapters(shared_bert: PathLike, adapter_files: Sequence[PathLike]):
    """Rebuild a multi-task model from a shared BERT and any set of task adapter files.

    Returns (model, task_names). Task ids follow the order of ``adapter_files``.
    All adapter files must come from the same architecture (same config apart from
    the number of tasks).
    """
    if not adapter_files:
        raise CheckpointError("no adapter checkpoints given")
    adapters = [(_read_safetensors(path), path) for path in adapter_files]
    configs = []
    for (_, metadata), path in adapters:
        if "config" not in metadata or "task" not in metadata:
            raise CheckpointError(f"{path}: not a task adapter checkpoint (no task metadata)")
        configs.append(BertConfig.from_dict(json.loads(metadata["config"])).replace(num_tasks=1))
    for config, (_, path) in zip(configs[1:], adapters[1:]):
        if config != configs[0]:
            raise CheckpointError(f"{path}: built for a different architecture than {adapters[0][1]}")
    task_names = [metadata["task"] for (_, metadata), _ in adapters]
    labels = [int(metadata["num_labels"]) for (_, metadata), _ in adapters]
    model = BertForMultiTask(configs[0].replace(num_tasks=len(adapters)), labels)
    modeling.load_pretrained_weights(model, shared_bert)
    for task_id, ((tensors, _), path) in enumerate(adapters):
        _load_task_tensors(model, tensors, task_id, path)
    return model, task_names


def _load_task_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor], task_id: int, path) -> None:
    expected = {_renumber_task(key, task_id): value for key, value in unique_state_dict(model).items()
                if modeling.task_of_key(key) == 0}
    renamed = {_renumber_task(key, task_id): tensor for key, tensor in tensors.items()}
    missing = sorted(set(expected) - set(renamed))
    extra = sorted(set(renamed) - set(expected))
    if missing or extra:
        key = (missing or extra)[0]
        what = "lacks" if missing else "has an unexpected"
        raise CheckpointError(f"{path}: {what} tensor '{_renumber_task(key, 0)}'")
    own = model.state_dict()
    for key, tensor in renamed.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{path}: '{_renumber_task(key, 0)}' has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(own[key].shape)}")
    model.load_state_dict(renamed, strict=False)
