"""Every file the project reads or writes: the one atomic writer, reading state dicts
safely, loading pretrained weights, the self-contained best model, resumable training
checkpoints, per-task adapter checkpoints, and one strict state-dict check.

Every file is written to a temporary name in the same folder (``.<name>.<random>.tmp``),
flushed to disk and then renamed, so a crash never leaves a half-written file under
the real name. A process killed outright (SIGKILL, power loss) can leave its temporary
file behind; ``remove_partial_files`` clears those when the next run starts. A write
that fails (a full disk, a file-size limit, an I/O error, whatever raised it) becomes
one ``WriteError`` naming the file, why, and what is intact; files written as a set
(``atomic_group``) replace the previous set only once every one is complete. Nothing
is ever unpickled with code execution: torch files are read with ``weights_only=True``.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

import modeling
from errors import CheckpointError, UsageError, WriteError
from modeling import BertConfig, BertForMultiTask

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


BEST_MODEL_FILE = "best_model.pth"  # the original's name
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
TASKS_FILE = "tasks.json"
TRAINING_CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT_FILE = "last.pt"
FINISHED_FILE = "finished.json"  # in checkpoints/: written when a run has trained every epoch
ARGS_FILE = "args.json"  # the run's arguments, which --resume reuses
ADAPTER_DIR = "adapters"
SHARED_BERT_FILE = "shared_bert.safetensors"  # written by earlier versions; best_model.pth serves now


# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------

TEMPORARY_SUFFIX = ".tmp"

# The temporaries of the ``atomic_group`` being written (None outside a group).
_group_pending: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("atomic_group", default=None)


@contextmanager
def atomic_path(path: PathLike, expected_bytes: int | None = None):
    """Yield a temporary path beside ``path``; on success flush it to disk and rename it
    onto ``path``. On any exception (or a signal turned into one) the temporary file is
    removed and ``path`` keeps its previous content.

    A failure to write becomes a ``WriteError`` naming ``path``, why it failed and that
    the previous file is unchanged; ``expected_bytes`` (the file's likely size) lets it
    say how much space a full disk lacks. Other exceptions (a bug, bad input) pass
    unchanged. Inside ``atomic_group`` the rename waits for the rest of the group."""
    path = Path(path)
    group = _group_pending.get()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    except OSError as err:  # no temporary file yet: any error here is one of writing
        raise WriteError(path, _reason(err.errno or 0, err, path, None, expected_bytes), _left_behind(path),
                         err.errno) from err
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        # mkstemp creates 0600, and some writers (safetensors) create the file anew: give
        # the finished file the permissions a plain open() would, 0666 less the umask.
        os.chmod(temporary, 0o666 & ~current_umask())
        _fsync_file(temporary)  # the data is on disk before the name points at it
        if group is not None:
            group.append((temporary, path))  # renamed when the whole group is written
            return
        os.replace(temporary, path)
        _fsync_directory(path.parent)  # ... and the rename itself survives a power loss
    except BaseException as err:
        # Why it failed is read before the temporary goes (its size, the space it holds).
        earlier = sum(_file_size(done) for done, _ in group or ())
        failure = write_failure(err, path, temporary, expected_bytes, earlier)
        if os.path.exists(temporary):
            os.unlink(temporary)
        if failure is None:
            raise
        raise WriteError(path, failure[1], _left_behind(path), failure[0]) from err


@contextmanager
def atomic_group():
    """Files written with ``atomic_path`` inside the block (the adapter files, the best
    model's files) replace their real names only at the end of the block, once every
    one of them is complete: a write that fails part-way leaves the whole previous set,
    never a mix of new and old files that looks complete. A group inside a group joins
    the outer one. Also usable as a decorator (``@atomic_group()``).

    The renames at the end are not one atomic step: a SIGKILL between two of them
    leaves some files new and some old (a window of microseconds, not of a write)."""
    if _group_pending.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _group_pending.set(pending)
    try:
        yield
    except BaseException as err:
        for temporary, _ in pending:
            if temporary.exists():
                temporary.unlink()
        if isinstance(err, WriteError) and pending:
            err.intact = (f"{err.intact}, and no file of the set written with it was replaced "
                          f"({', '.join(path.name for _, path in pending)} keep their previous content)")
        raise
    finally:
        _group_pending.reset(token)
    for index, (temporary, path) in enumerate(pending):
        try:
            os.replace(temporary, path)
        except OSError as err:
            for rest, _ in pending[index:]:
                if rest.exists():
                    rest.unlink()
            replaced = ", ".join(p.name for _, p in pending[:index]) or "none"
            raise WriteError(path, _reason(err.errno or 0, err, path, None, None),
                             f"files of its set already replaced: {replaced}; the others keep their "
                             f"previous content", err.errno) from err
    for folder in dict.fromkeys(path.parent for _, path in pending):
        _fsync_directory(folder)


# Why a write failed, by errno, in the words of the one-line error.
WRITE_FAILURES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error (a failing disk or a lost network mount)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
NEARLY_FULL_BYTES = 1 << 20  # a writer that fails without saying why, with less free: the disk is full


def write_failure(err: BaseException, path: PathLike, temporary: PathLike,
                  expected_bytes: int | None = None, earlier_bytes: int = 0) -> tuple[int, str] | None:
    """Why writing ``path`` (through ``temporary``) failed: (errno, a few words; errno 0
    when unknown), or None when ``err`` is no failure to write (a bug, bad input, a
    signal: it keeps its own type).

    Failures to write are an OSError about the file (or without a file name, with an
    errno of ``WRITE_FAILURES``), torch's error from its zip writer (``RuntimeError:
    [enforce fail at inline_container.cc] ... unexpected pos``) and safetensors' I/O
    error. torch keeps the OSError it hit in its error's context; when a writer says
    nothing of the cause, a file at the process's size limit means EFBIG and a nearly
    full disk ENOSPC. ``earlier_bytes``: other files of the same group, which need
    space too."""
    path, temporary = Path(path), Path(temporary)
    code = _failure_errno(err, {os.fspath(path), os.fspath(temporary), os.fspath(path.parent)})
    if code is None:
        return None
    if code == 0:
        code = _guess_errno(temporary)
    return code, _reason(code, err, path, temporary, expected_bytes, earlier_bytes)


def _failure_errno(err: BaseException, own_names: set[str]) -> int | None:
    """The errno of a failure to write (0: a writer failed without saying why), or None."""
    if isinstance(err, OSError):
        names = {os.fsdecode(name) for name in (err.filename, err.filename2) if name is not None}
        if names & own_names or (not names and err.errno in WRITE_FAILURES):
            return err.errno or 0
        return None  # another file (an input being read) or not an error of writing
    text = str(err)
    if type(err).__name__ == "SafetensorError" and "I/O error" in text:
        found = re.search(r"os error (\d+)", text)
        return int(found.group(1)) if found else 0
    if isinstance(err, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text):
        context = err.__cause__ or err.__context__
        return (context.errno or 0) if isinstance(context, OSError) else 0
    return None


def _guess_errno(temporary: Path) -> int:
    limit = file_size_limit()
    if limit is not None and _file_size(temporary) >= limit:
        return errno.EFBIG
    try:
        if shutil.disk_usage(temporary.parent).free < NEARLY_FULL_BYTES:
            return errno.ENOSPC
    except OSError:
        pass
    return 0


def _reason(code: int, err: BaseException, path: Path, temporary: Path | None,
            expected_bytes: int | None, earlier_bytes: int = 0) -> str:
    written = _file_size(temporary) if temporary is not None else 0
    needed = expected_bytes + earlier_bytes if expected_bytes is not None else None
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason = WRITE_FAILURES[code]
        reason += f", about {format_bytes(needed)} needed" if needed else f" after {format_bytes(written)} were written"
        if code == errno.ENOSPC:
            try:  # free once the temporary file is removed
                reason += f" ({format_bytes(shutil.disk_usage(path.parent).free + written)} free)"
            except OSError:
                pass
        return reason
    if code == errno.EFBIG:
        limit = file_size_limit()
        if limit is None:
            return "file too large for the file system" + (f" (about {format_bytes(needed)})" if needed else "")
        return (f"file too large: this process may write files of at most {format_bytes(limit)} (ulimit -f)"
                + (f", and this one needs about {format_bytes(expected_bytes)}" if expected_bytes else ""))
    if code in WRITE_FAILURES:
        return WRITE_FAILURES[code]
    if code:
        return os.strerror(code).lower()
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"the writer failed ({type(err).__name__}: {first})"


def _left_behind(path: Path) -> str:
    """What a failed write of ``path`` leaves (the temporary file is gone by now)."""
    if path.exists():
        return f"the previous {path.name} is unchanged"
    return f"no partial {path.name} was left behind"


def file_size_limit() -> int | None:
    """The process's largest file in bytes (``ulimit -f``, RLIMIT_FSIZE), or None."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def _file_size(path: PathLike | None) -> int:
    try:
        return os.path.getsize(path) if path is not None else 0
    except OSError:
        return 0


def format_bytes(count: int) -> str:
    """1.5 KB, 92 MB, 3.2 GB (powers of 1000, as df -H and file managers show them)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= size:
            value = count / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{count} bytes"


TENSOR_RECORD_BYTES = 350  # torch.save's zip entry and pickled reference per tensor (measured: about 335)


def serialized_size(obj: Any) -> int:
    """About how many bytes torch.save (or safetensors) writes for ``obj``: its distinct
    tensor storages, plus a little per tensor for the file's records."""
    storages: dict[tuple[int, str], int] = {}
    tensors = 0

    def visit(value: Any) -> None:
        nonlocal tensors
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[storage.data_ptr() or id(value), str(value.device)] = storage.nbytes()
            tensors += 1
        elif isinstance(value, Mapping):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(obj)
    return sum(storages.values()) + TENSOR_RECORD_BYTES * tensors


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


def remove_partial_files(*folders: PathLike) -> list[Path]:
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


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere it can only be read by
    setting it (and setting it back), which a thread creating a file meanwhile would see."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> None:
    data = text.encode("utf-8")  # no newline translation
    with atomic_path(path, expected_bytes=len(data)) as temporary:
        temporary.write_bytes(data)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    with atomic_path(path, expected_bytes=serialized_size(obj)) as temporary:
        # Through a Python file: when the OS refuses a write (ENOSPC), torch raises its own
        # RuntimeError but keeps the OSError, errno and all, as that error's context.
        with open(temporary, "wb") as stream:
            torch.save(obj, stream)


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path: PathLike,
                            metadata: Mapping[str, str] | None = None) -> None:
    """A safetensors file, serialised in memory and written as a Python file (so a
    failing write keeps its errno): for files the size of a task's modules."""
    from safetensors.torch import save
    data = save(dict(tensors), metadata=dict(metadata) if metadata is not None else None)
    with atomic_path(path, expected_bytes=len(data)) as temporary:
        temporary.write_bytes(data)


def atomic_copy(source: PathLike, path: PathLike) -> None:
    with atomic_path(path, expected_bytes=_file_size(source)) as temporary:
        shutil.copyfile(source, temporary)


@contextmanager
def atomic_text_output(path: PathLike) -> Iterator[TextIO]:
    """A UTF-8 text stream (\\n line endings) whose content replaces ``path`` only when
    the block succeeds (``atomic_path``). For scripts' --output_file: a missing folder
    or a folder given as the file is a UsageError."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{path}: output folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder; --output_file must name a file")
    with atomic_path(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="\n") as stream:
            yield stream


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
# Reading state dicts and loading pretrained weights
# --------------------------------------------------------------------------------------

# What a folder given as weights may hold: a Hugging Face folder's file, or a run folder's best model.
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", BEST_MODEL_FILE)
_IGNORABLE_KEYS = ("embeddings.position_ids",)


@dataclass
class LoadReport:
    """What a load did: tensors loaded, task-specific ones left at init, ignored extras.

    ``kept_init_modules`` counts the tensors left at init by the kind of module that
    holds them (``BERTPals``, ``classifier`` ...), for the log line.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    kept_init: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    kept_init_modules: dict[str, int] = field(default_factory=dict)
    loaded_next_from: str | None = None  # where the task modules come from right after (resume, adapters)

    def summary(self) -> str:
        line = f"loaded {len(self.loaded)} tensors from {self.source}"
        if self.kept_init:
            kinds = self.kept_init_modules or {_group_names(self.kept_init): len(self.kept_init)}
            listed = ", ".join(f"{kind} ({count})" for kind, count in kinds.items())
            if self.loaded_next_from:
                line += f"; {len(self.kept_init)} tensors of task modules are loaded next from " \
                        f"{self.loaded_next_from}: {listed}"
            else:
                line += (f"; {len(self.kept_init)} tensors of task modules the checkpoint lacks keep their "
                         f"initialisation: " + listed)
        if self.ignored:
            line += f"; ignored {len(self.ignored)} checkpoint tensors ({_group_names(self.ignored)})"
        return line


def task_module_kind(model: nn.Module, key: str) -> str:
    """What kind of task module holds state-dict key ``key`` of ``model``, in words a
    user recognises: the adapter's class (``BERTPals``, ``BERTLowRank``, ``BERTLhuc``),
    the class of a module on top (``BERTAttention on top``), or the name of a per-task
    list of plain layers (``classifier``, ``mult_aug_dense``)."""
    found = modeling.split_task_key(key)
    if found is None:
        return key.split(".")[0]  # a head outside the per-task lists (qa_outputs ...)
    list_path, task_id, _ = found
    path = f"{list_path}.{task_id}"  # the task's part
    list_name = list_path.split(".")[-1]
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return list_name
    if isinstance(module, nn.ModuleList) and len(module):
        module = module[0]  # the top attention: a list of blocks per task
    if type(module).__module__ == "torch.nn.modules.linear":
        return list_name
    kind = type(module).__name__
    on_top = list_name == "multi_layers" and ".layer." not in path
    return f"{kind} on top" if on_top else kind


def _group_names(keys: Sequence[str], limit: int = 4) -> str:
    """A short description of many keys: their distinct leading parts."""
    groups = []
    for key in keys:
        parts = key.split(".")
        head = ".".join(p for p in parts[:3] if not p.isdigit())
        if head not in groups:
            groups.append(head)
    shown = ", ".join(groups[:limit])
    return shown + (", ..." if len(groups) > limit else "")


def resolve_weights_file(path: str | os.PathLike) -> str:
    """A weights file, or a Hugging Face-style folder holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in WEIGHT_FILE_NAMES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise CheckpointError(f"{path}: folder holds none of {', '.join(WEIGHT_FILE_NAMES)}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a torch file, without executing code.

    ``torch.load`` runs with ``weights_only=True``: a pickle that would run code is
    refused. A training checkpoint ``{"model": state_dict, ...}`` yields its model part.
    """
    weights_file = resolve_weights_file(path)
    if weights_file.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(weights_file, device="cpu")
        except Exception as err:  # safetensors raises its own error type for bad headers
            raise CheckpointError(f"{weights_file}: not a readable safetensors file ({err})") from None
    try:
        loaded = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ...
        reason = explain_torch_load_error(err)
        raise CheckpointError(f"{weights_file}: refused or unreadable checkpoint (only plain tensors "
                              f"are loaded, never code): {reason}") from None
    return _extract_tensors(loaded, weights_file)


def _extract_tensors(loaded: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(f"{source}: holds no state dict of tensors")
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry '{key}' is not a tensor")
    return dict(loaded)


def normalize_checkpoint_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map any supported key layout onto this model's names.

    Handles the ``module.`` prefix of DataParallel checkpoints and Hugging Face's
    ``LayerNorm.weight``/``LayerNorm.bias`` names. A ``bert.`` prefix is kept (heads
    live outside ``bert``); see ``_align_bert_prefix``.
    """
    normalized = {}
    for key, tensor in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if ".LayerNorm." in key or key.startswith("LayerNorm."):
            key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        normalized[key] = tensor
    return normalized


def _align_bert_prefix(state_dict: dict[str, torch.Tensor], model_has_bert_prefix: bool) -> dict[str, torch.Tensor]:
    """Give BERT keys the prefix the target model uses (``bert.`` for heads, none for BertModel)."""
    aligned = {}
    for key, tensor in state_dict.items():
        bare = key[len("bert."):] if key.startswith("bert.") else key
        is_bert_key = bare.startswith(modeling.BERT_SUBMODULES)
        if is_bert_key:
            key = "bert." + bare if model_has_bert_prefix else bare
        aligned[key] = tensor
    return aligned


def load_pretrained_weights(model: nn.Module, path: str | os.PathLike,
                            log: logging.Logger | None = None, *, shared_only: bool = False,
                            loaded_next_from: str | None = None) -> LoadReport:
    """Load a pretrained checkpoint into ``BertModel`` or any head model.

    Accepts the original converted format (``gamma``/``beta``), a Hugging Face folder
    (``model.safetensors`` or ``pytorch_model.bin``) or file, with or without ``bert.``
    or ``module.``, and full multi-task checkpoints of this project (``best_model.pth``
    or the run folder holding it).

    Every BERT weight must be present with the right shape (else CheckpointError naming
    the key). Task-specific tensors the checkpoint lacks keep their initialisation;
    checkpoint tensors the model has no place for are ignored when they are pre-training
    or head tensors, and refused otherwise. The summary goes to the log as one line.

    ``shared_only`` takes only the shared BERT from the checkpoint and ignores its
    task-specific tensors: a multi-task checkpoint (``best_model.pth``) serves as the
    shared BERT for adapters of any of its tasks, in any order.

    ``loaded_next_from`` names where the caller loads the task modules from right
    after (adapter files, a training checkpoint), so that the log line says so instead
    of "keep their initialisation".
    """
    source = os.fspath(path)
    checkpoint = normalize_checkpoint_keys(read_state_dict(path))
    model_keys = model.state_dict()
    has_prefix = any(k.startswith("bert.") for k in model_keys)
    checkpoint = _align_bert_prefix(checkpoint, has_prefix)
    report = LoadReport(source=source, loaded_next_from=loaded_next_from)
    if shared_only:
        report.ignored = [key for key in checkpoint if modeling.is_task_specific(key)]
        checkpoint = {key: tensor for key, tensor in checkpoint.items() if not modeling.is_task_specific(key)}
    to_load = {}
    for key, target in model_keys.items():
        if key not in checkpoint:
            if not modeling.is_task_specific(key):
                raise CheckpointError(f"{source}: missing BERT weight '{key}'"
                                      f"{_size_disagreement(model_keys, checkpoint)}")
            report.kept_init.append(key)
            kind = task_module_kind(model, key)
            report.kept_init_modules[kind] = report.kept_init_modules.get(kind, 0) + 1
            continue
        tensor = checkpoint[key]
        if tuple(tensor.shape) != tuple(target.shape):
            raise CheckpointError(f"{source}: '{key}' has shape {tuple(tensor.shape)}, the model expects "
                                  f"{tuple(target.shape)}{_size_disagreement(model_keys, checkpoint)}")
        to_load[key] = tensor
        report.loaded.append(key)
    for key in checkpoint:
        if key in model_keys:
            continue
        bare = key[len("bert."):] if key.startswith("bert.") else key
        # Pre-training heads, other heads and adapters of another config have no place
        # here; an unknown BERT weight means the config does not match the checkpoint.
        if bare in _IGNORABLE_KEYS or modeling.is_task_specific(key):
            report.ignored.append(key)
        else:
            raise CheckpointError(f"{source}: unexpected tensor '{key}' (the model has no such "
                                  f"weight; does the config match the checkpoint?)")
    model.load_state_dict(to_load, strict=False)
    (log or logger).info(report.summary())
    return report


# Where a BERT state dict shows each config size: (config key, tensor key, dimension).
_SIZE_EVIDENCE = (
    ("hidden_size", "embeddings.word_embeddings.weight", 1),
    ("vocab_size", "embeddings.word_embeddings.weight", 0),
    ("max_position_embeddings", "embeddings.position_embeddings.weight", 0),
    ("type_vocab_size", "embeddings.token_type_embeddings.weight", 0),
    ("intermediate_size", "encoder.layer.0.intermediate.dense.weight", 0),
)
_LAYER_INDEX = re.compile(r"^(?:bert\.)?encoder\.layer\.(\d+)\.")


def bert_sizes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The config sizes a BERT state dict shows (keys with or without ``bert.``)."""
    sizes = {}
    for name, key, dim in _SIZE_EVIDENCE:
        tensor = state_dict.get(key, state_dict.get("bert." + key))
        if tensor is not None and tensor.dim() > dim:
            sizes[name] = int(tensor.shape[dim])
    layers = {int(m.group(1)) for k in state_dict if not modeling.is_task_specific(k)
              for m in [_LAYER_INDEX.match(k)] if m}
    if layers:
        sizes["num_hidden_layers"] = max(layers) + 1
    return sizes


def _size_disagreement(model_state: Mapping[str, torch.Tensor], checkpoint: Mapping[str, torch.Tensor]) -> str:
    """'; the config and the checkpoint disagree on hidden_size (config 768, checkpoint
    384): ...' or '' when every size they both show agrees."""
    ours, theirs = bert_sizes(model_state), bert_sizes(checkpoint)
    differ = [f"{name} (config {ours[name]}, checkpoint {theirs[name]})"
              for name in ours if name in theirs and ours[name] != theirs[name]]
    if not differ:
        return ""
    return (f"; the config and the checkpoint disagree on {', '.join(differ)}: use the config that "
            f"belongs to the checkpoint")


def check_state_dict(saved: Any, expected: Mapping[str, torch.Tensor], source: Any, what: str = "tensor") -> None:
    """A strict load's checks, with an error naming the first bad key.

    ``saved`` must hold exactly the keys of ``expected``, each a tensor of the same
    shape. Used by resume (the whole model) and by adapter loading (one task's part).
    """
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{source}: not a state dict")
    missing = [key for key in expected if key not in saved]
    if missing:
        raise CheckpointError(f"{source}: lacks {what} '{missing[0]}' ({len(missing)} missing): another config?")
    extra = [key for key in saved if key not in expected]
    if extra:
        raise CheckpointError(f"{source}: has unexpected {what} '{extra[0]}' ({len(extra)} unexpected): "
                              f"another config?")
    for key, tensor in saved.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: entry '{key}' is not a tensor")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{source}: {what} '{key}' has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(expected[key].shape)}")


def load_config_for_checkpoint(path: str | os.PathLike) -> BertConfig | None:
    """The ``config.json`` beside (or inside) a checkpoint, if there is one."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    candidate = os.path.join(folder, "config.json")
    return BertConfig.from_json_file(candidate) if os.path.isfile(candidate) else None


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


MODEL_FOLDER_FILES = (BEST_MODEL_FILE, CONFIG_FILE, VOCAB_FILE, TASKS_FILE)


@dataclass
class ModelFolder:
    """What ``load_model_folder`` returns: the model (eval mode), its task names in task-id
    order, the vocabulary file it was trained with and the config file it was built from."""

    model: BertForMultiTask
    task_names: list[str]
    vocab_file: Path
    config_file: Path


def load_model_folder(folder: PathLike, weights: PathLike | None = None) -> ModelFolder:
    """The model ``save_model_folder`` wrote (a run folder of run_multi_task.py).

    Every file must be there (else CheckpointError naming the missing ones), and
    best_model.pth (or ``weights``, another state dict of the same model) must hold
    exactly the tensors of the model config.json and tasks.json describe (else the error
    names the first key that differs): nothing is left at its random initialisation.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (expected a run folder of run_multi_task.py)")
    missing = [name for name in MODEL_FOLDER_FILES if not (folder / name).is_file()]
    started = (folder / ARGS_FILE).is_file() or training_checkpoint_path(folder).is_file()
    if weights is None and BEST_MODEL_FILE in missing and started:
        # A run writes args.json (and checkpoints/last.pt on a stop) before training, and
        # its model only at the end of its first epoch, when it is first evaluated.
        hint = (f"resume it with run_multi_task.py --output_dir {folder} --resume"
                if training_checkpoint_path(folder).is_file() else "start it again")
        raise CheckpointError(f"{folder}: the run was stopped before its first evaluation, so it has no model "
                              f"yet ({BEST_MODEL_FILE} is written when an epoch ends); {hint}")
    if missing:
        raise CheckpointError(f"{folder}: incomplete model folder, missing {', '.join(missing)} "
                              f"(a run folder holds {', '.join(MODEL_FOLDER_FILES)})")
    config = BertConfig.from_json_file(folder / CONFIG_FILE)
    modeling.check_adapter_registered(config, folder / CONFIG_FILE)
    tasks = read_tasks_file(folder / TASKS_FILE)
    try:
        model = BertForMultiTask(config.replace(num_tasks=len(tasks)), [task["num_labels"] for task in tasks])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{folder / TASKS_FILE}: does not fit {folder / CONFIG_FILE} ({err})") from None
    weights = folder / BEST_MODEL_FILE if weights is None else Path(weights)
    state = normalize_checkpoint_keys(read_state_dict(weights))
    check_state_dict(state, model.state_dict(), weights)
    model.load_state_dict(state)
    return ModelFolder(model.eval(), [task["name"] for task in tasks], folder / VOCAB_FILE, folder / CONFIG_FILE)


def read_tasks_file(path: PathLike) -> list[dict[str, Any]]:
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

def capture_rng_state() -> dict[str, Any]:
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


def numpy_random_state_to_plain(state: tuple) -> dict[str, Any]:
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
                             keep_epoch_copy: int | None = None) -> Path:
    """Write the resumable state atomically; optionally also as ``epoch_<n>.pt``."""
    path = training_checkpoint_path(output_dir)
    atomic_torch_save(dict(state), path)
    if keep_epoch_copy is not None:
        atomic_copy(path, path.parent / f"epoch_{keep_epoch_copy}.pt")
    return path


def mark_training_finished(output_dir: PathLike, record: Mapping[str, Any], keep_last: bool = False) -> Path:
    """Write ``checkpoints/finished.json`` (so a later --resume says the run is done),
    then remove ``checkpoints/last.pt`` unless ``keep_last``: a finished run cannot be
    resumed, and the file is the largest of a run (the model and two Adam moments)."""
    marker = Path(output_dir) / TRAINING_CHECKPOINT_DIR / FINISHED_FILE
    atomic_write_text(marker, json.dumps(dict(record), indent=2, sort_keys=True) + "\n")
    last = training_checkpoint_path(output_dir)
    if not keep_last and last.exists():
        last.unlink()
    return marker


def read_finished_marker(output_dir: PathLike) -> dict[str, Any] | None:
    """What ``mark_training_finished`` wrote, or None for a run that has not finished."""
    path = Path(output_dir) / TRAINING_CHECKPOINT_DIR / FINISHED_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    return record if isinstance(record, dict) else {}


def folder_size(folder: PathLike) -> int:
    """Bytes in the files under ``folder`` (links not followed)."""
    return sum(path.lstat().st_size for path in Path(folder).rglob("*") if path.is_file() and not path.is_symlink())


@dataclass
class SpaceEstimate:
    """The files of a training run and about how many bytes each takes (from the
    model's parameters: float tensors as they are, two Adam moments per trainable one)."""

    checkpoint: int  # checkpoints/last.pt: the model, the optimizer moments, a little state
    best_model: int  # best_model.pth: the model
    adapters: int  # adapters/*.safetensors: every task's own modules
    epoch_copies: int  # checkpoints/epoch_<n>.pt still to come (--keep_epoch_checkpoints)

    @property
    def peak(self) -> int:
        """The most a run holds at once: every file, and a second last.pt while a new
        one is written beside it (the largest temporary; the best model's set is smaller)."""
        return 2 * self.checkpoint + self.best_model + self.adapters + self.epoch_copies * self.checkpoint


CHECKPOINT_STATE_BYTES = 32_000  # last.pt beyond the tensors: random generator states, history
SAFETENSORS_ENTRY_BYTES = 110  # a tensor's entry in a safetensors header (name, dtype, shape, offsets)


def estimate_run_space(model: nn.Module, save_adapters: bool = True, epoch_copies: int = 0) -> SpaceEstimate:
    model_bytes = serialized_size(model.state_dict())
    trainable = [p for p in model.parameters() if p.requires_grad]
    moments = 2 * sum(p.numel() * p.element_size() + TENSOR_RECORD_BYTES for p in trainable)  # Adam's m and v
    adapters = 0
    if save_adapters:
        task_tensors = [t for key, t in unique_state_dict(model).items() if modeling.task_of_key(key) is not None]
        metadata = len(model.config.to_json_string()) + 100  # each file's config, task name and labels
        adapters = (sum(t.numel() * t.element_size() + SAFETENSORS_ENTRY_BYTES for t in task_tensors)
                    + metadata * len(getattr(model, "num_labels", ())))
    return SpaceEstimate(checkpoint=model_bytes + moments + CHECKPOINT_STATE_BYTES, best_model=model_bytes,
                         adapters=adapters, epoch_copies=epoch_copies)


def free_space_warning(output_dir: PathLike, model: nn.Module, save_adapters: bool = True,
                       epoch_copies: int = 0) -> str | None:
    """One line when ``output_dir`` has less free space than the run's checkpoints and
    best model need at their largest (the files already there that the run replaces
    count as free), else None."""
    output_dir = Path(output_dir)
    estimate = estimate_run_space(model, save_adapters, epoch_copies)
    replaced = [training_checkpoint_path(output_dir), output_dir / BEST_MODEL_FILE]
    replaced += list((output_dir / ADAPTER_DIR).glob("*.safetensors")) if save_adapters else []
    present = sum(_file_size(path) for path in replaced)
    try:
        free = shutil.disk_usage(output_dir).free
    except OSError:
        return None
    if free + present >= estimate.peak:
        return None
    parts = [f"{TRAINING_CHECKPOINT_DIR}/{LAST_CHECKPOINT_FILE} {format_bytes(estimate.checkpoint)}, twice while "
             f"a new one is written", f"{BEST_MODEL_FILE} {format_bytes(estimate.best_model)}"]
    if estimate.adapters:
        parts.append(f"{ADAPTER_DIR}/ {format_bytes(estimate.adapters)}")
    if epoch_copies:
        parts.append(f"{epoch_copies} epoch checkpoint(s) {format_bytes(epoch_copies * estimate.checkpoint)}")
    return (f"{output_dir}: {format_bytes(free)} free, but this run's checkpoints and best model need about "
            f"{format_bytes(estimate.peak - present)} more ({'; '.join(parts)}): free space or choose another "
            f"--output_dir, or the run stops at the first save that does not fit (its last checkpoint stays intact)")


def save_run_arguments(output_dir: PathLike, arguments: Mapping[str, Any]) -> Path:
    path = Path(output_dir) / ARGS_FILE
    atomic_write_text(path, json.dumps(dict(arguments), indent=2, sort_keys=True) + "\n")
    return path


def read_run_arguments(output_dir: PathLike) -> dict[str, Any] | None:
    """The arguments ``save_run_arguments`` wrote, or None when there are none."""
    path = Path(output_dir) / ARGS_FILE
    if not path.is_file():
        return None
    try:
        arguments = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(arguments, dict):
        raise CheckpointError(f"{path}: expected an object of argument names and values")
    return arguments


def load_training_checkpoint(output_dir: PathLike) -> dict[str, Any]:
    path = training_checkpoint_path(output_dir)
    if not path.is_file():
        raise CheckpointError(f"{path}: no training checkpoint to resume from")
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "model" not in state or "global_step" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint of this script")
    return state


# --------------------------------------------------------------------------------------
# Optimizer state in training checkpoints: keyed by parameter name
#
# torch keys an optimizer's state by the parameter's position in its groups, so a
# change of parameter order (a module registered elsewhere) would hand one parameter's
# moments to another. last.pt keys it by parameter name instead (tied parameters by
# their first name, as named_parameters() gives them); it goes back to positions only
# to be loaded into this run's optimizer.
# --------------------------------------------------------------------------------------

def optimizer_states_by_name(optimizers: Sequence[torch.optim.Optimizer], model: nn.Module) -> list[dict[str, Any]]:
    """Each optimizer's ``state_dict()`` with every position replaced by its parameter's name."""
    name_of = {param: name for name, param in model.named_parameters()}
    states = []
    for optimizer in optimizers:
        names = [name_of[param] for group in optimizer.param_groups for param in group["params"]]
        saved = optimizer.state_dict()
        states.append({"state": {names[position]: value for position, value in saved["state"].items()},
                       "param_groups": [{**group, "params": [names[position] for position in group["params"]]}
                                        for group in saved["param_groups"]]})
    return states


def optimizer_states_by_position(saved_states: Any, optimizers: Sequence[torch.optim.Optimizer], model: nn.Module,
                                 saved_model_keys: Sequence[str], source: Any) -> list[dict[str, Any]]:
    """The saved optimizer states (by name, or by position from an earlier version) as
    ``load_state_dict`` of this run's ``optimizers`` takes them; CheckpointError (one
    line naming ``source``) for a state that does not fit.

    A state keyed by position was written before names were used. Its positions follow
    the parameter order of the model that wrote it, which its model tensors
    (``saved_model_keys``, in their saved order) record: each parameter's first key.
    With that order and this run's groups (the same parameters, grouped by name), the
    positions map back to names; if a count or a shape does not agree, it is refused.
    """
    if not isinstance(saved_states, list) or len(saved_states) != len(optimizers):
        count = len(saved_states) if isinstance(saved_states, list) else "no list of"
        raise CheckpointError(f"{source}: holds {count} optimizer state(s), this run has {len(optimizers)}")
    name_of = {param: name for name, param in model.named_parameters()}
    positional = []
    for optimizer, saved in zip(optimizers, saved_states):
        groups = [[name_of[param] for param in group["params"]] for group in optimizer.param_groups]
        try:
            saved_groups, saved_state = saved["param_groups"], saved["state"]
            if len(saved_groups) != len(groups):
                raise CheckpointError(f"{source}: its optimizer has {len(saved_groups)} parameter group(s), "
                                      f"this run's has {len(groups)}")
            if any(not isinstance(key, str) for key in saved_state):
                saved = _named_from_positions(saved, groups, model, saved_model_keys, source)
                saved_groups, saved_state = saved["param_groups"], saved["state"]
            positions = {name: position for position, name in enumerate(n for group in groups for n in group)}
            for index, (group, names) in enumerate(zip(saved_groups, groups)):
                if sorted(group["params"]) != sorted(names):
                    unknown = sorted(set(group["params"]) - set(names)) or sorted(set(names) - set(group["params"]))
                    raise CheckpointError(f"{source}: optimizer group {index} does not hold this model's "
                                          f"parameters (e.g. '{unknown[0]}')")
            positional.append({
                "state": {positions[name]: value for name, value in saved_state.items()},
                # This run's order within each group: load_state_dict pairs the lists position by position.
                "param_groups": [{**group, "params": [positions[name] for name in names]}
                                 for group, names in zip(saved_groups, groups)]})
        except (KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{source}: unreadable optimizer state ({type(err).__name__}: {err})") from None
    return positional


def _named_from_positions(saved: Mapping[str, Any], groups: list[list[str]], model: nn.Module,
                          saved_model_keys: Sequence[str], source: Any) -> dict[str, Any]:
    """A state keyed by position (an earlier version's last.pt), keyed by name."""
    why = (f"{source}: its optimizer state is keyed by position (written by an earlier version) "
           "and does not fit this model's parameters")
    param_of = dict(model.named_parameters(remove_duplicate=False))  # every alias of a tied parameter
    written_order: dict[nn.Parameter, int] = {}
    for key in saved_model_keys:  # the writing model's order: each parameter's first key
        param = param_of.get(key)
        if param is not None and param not in written_order:
            written_order[param] = len(written_order)
    name_of = {param: name for name, param in model.named_parameters()}
    position_names, sizes = [], []
    for names in groups:
        params = [param_of[name] for name in names]
        if any(param not in written_order for param in params):
            raise CheckpointError(f"{why} (the checkpoint's model lacks some of them)")
        position_names += [name_of[param] for param in sorted(params, key=written_order.__getitem__)]
        sizes.append(len(names))
    if [len(group["params"]) for group in saved["param_groups"]] != sizes:
        raise CheckpointError(f"{why} (its groups hold {[len(g['params']) for g in saved['param_groups']]} "
                              f"parameters, this run's {sizes})")
    state = {}
    for position, value in saved["state"].items():
        name = position_names[position] if isinstance(position, int) and 0 <= position < len(position_names) else None
        moments = [v for v in value.values() if isinstance(v, torch.Tensor) and v.dim() > 0] if name else []
        if name is None or any(tuple(v.shape) != tuple(param_of[name].shape) for v in moments):
            raise CheckpointError(f"{why} (entry {position})")
        state[name] = value
    return {"state": state, "param_groups": [{**group, "params": position_names[sum(sizes[:i]):sum(sizes[:i + 1])]}
                                             for i, group in enumerate(saved["param_groups"])]}


# --------------------------------------------------------------------------------------
# Adapter checkpoints: one small file per task
# --------------------------------------------------------------------------------------

def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied aliases collapsed to one key each.

    The PAL projections appear once per layer and once under ``encoder.mult_aug_dense``;
    the latter name is kept. Loading that one key fills every alias (same tensor).
    """
    kept: dict[str, torch.Tensor] = {}
    by_storage: dict[tuple, str] = {}
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


def task_state_dict(model: BertForMultiTask, task_id: int) -> dict[str, torch.Tensor]:
    """The task's own parameters (adapters, LHUC, modules on top, head) under task index 0."""
    return {modeling.key_for_task(key, 0): tensor.detach().contiguous().clone()
            for key, tensor in unique_state_dict(model).items()
            if modeling.task_of_key(key) == task_id}


def shared_state_dict(model: BertForMultiTask) -> dict[str, torch.Tensor]:
    """Everything shared by all tasks: the BERT weights without any adapter."""
    return {key: tensor.detach().contiguous().clone() for key, tensor in unique_state_dict(model).items()
            if modeling.task_of_key(key) is None}


# What an adapter file records about the files it belongs with (safetensors metadata, all strings).
SHARED_BERT_FINGERPRINT = "shared_bert_sha256"  # shared_bert_fingerprint() of the BERT trained beside it
TRAINED_WITH_KEYS = ("vocab_sha256", "do_lower_case", "max_seq_length")  # given by the trainer


def shared_bert_fingerprint(model: BertForMultiTask) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the shared BERT's tensors
    (``shared_state_dict``): which shared BERT a task's adapters were trained beside.
    About 0.2 s for MiniLM's 90 MB on one CPU core."""
    digest = hashlib.sha256()
    for key, tensor in sorted(shared_state_dict(model).items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


@atomic_group()  # all task files or none: never a half-written set that looks complete
def save_adapter_checkpoints(model: BertForMultiTask, task_names: Sequence[str], folder: PathLike,
                             trained_with: Mapping[str, Any] | None = None) -> list[Path]:
    """``adapters/<task>.safetensors`` per task.

    Each task file carries its metadata (task name, number of labels, the config), so
    a multi-task model can be rebuilt from a shared BERT and any set of task files
    (``build_model_from_adapters``). The shared BERT is not written again: the run's
    ``best_model.pth`` holds it (earlier versions wrote ``adapters/shared_bert.safetensors``,
    which still loads; ``shared_state_dict`` gives that part for anyone who wants it alone).

    What the adapters belong with is recorded too, so that files which do not belong
    together are refused: the fingerprint of the shared BERT beside them
    (``shared_bert_fingerprint``) and ``trained_with`` (``TRAINED_WITH_KEYS``: the
    vocabulary's ``tokenization.vocab_fingerprint``, lower-casing, max_seq_length).
    """
    folder = Path(folder)
    written = []
    config_json = model.config.to_json_string()
    provenance = {SHARED_BERT_FINGERPRINT: shared_bert_fingerprint(model)}
    provenance.update({key: value if isinstance(value, str) else json.dumps(value)  # metadata holds strings
                       for key, value in (trained_with or {}).items()})
    for task_id, name in enumerate(task_names):
        metadata = {"task": name, "num_labels": str(model.num_labels[task_id]), "config": config_json,
                    **provenance}
        path = folder / f"{name}.safetensors"
        atomic_save_safetensors(task_state_dict(model, task_id), path, metadata)
        written.append(path)
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

    ``shared_bert`` is any checkpoint holding the shared BERT weights: the run's
    ``best_model.pth`` (its own adapters and heads are ignored), a plain BERT checkpoint
    or an older run's ``adapters/shared_bert.safetensors``. Returns (model, task_names).
    Task ids follow the order of ``adapter_files``. All adapter files must come from
    the same architecture (same config apart from the number of tasks).
    """
    if not adapter_files:
        raise CheckpointError("no adapter checkpoints given")
    adapters = [(_read_safetensors(path), path) for path in adapter_files]
    configs = []
    for (_, metadata), path in adapters:
        if "config" not in metadata or "task" not in metadata:
            raise CheckpointError(f"{path}: not a task adapter checkpoint (no task metadata)")
        configs.append(BertConfig.from_dict(json.loads(metadata["config"])).replace(num_tasks=1))
        modeling.check_adapter_registered(configs[-1], path)
    for config, (_, path) in zip(configs[1:], adapters[1:]):
        if config != configs[0]:
            raise CheckpointError(f"{path}: built for a different architecture than {adapters[0][1]}")
    task_names = [metadata["task"] for (_, metadata), _ in adapters]
    labels = [int(metadata["num_labels"]) for (_, metadata), _ in adapters]
    model = BertForMultiTask(configs[0].replace(num_tasks=len(adapters)), labels)
    files = ", ".join(os.path.basename(os.fspath(path)) for path in adapter_files)
    load_pretrained_weights(model, shared_bert, shared_only=True, loaded_next_from=f"the adapter files ({files})")
    _check_shared_bert(model, shared_bert, adapters)
    for task_id, ((tensors, _), path) in enumerate(adapters):
        _load_task_tensors(model, tensors, task_id, path)
    return model, task_names


def _check_shared_bert(model: BertForMultiTask, shared_bert: PathLike, adapters) -> None:
    """Adapters belong to the shared BERT they were trained beside: with another one
    they give near-random predictions without a word, so that is refused. Files of
    earlier versions (no fingerprint) are not checked."""
    recorded = [(metadata[SHARED_BERT_FINGERPRINT], path) for (_, metadata), path in adapters
                if SHARED_BERT_FINGERPRINT in metadata]
    if not recorded:
        return
    actual = shared_bert_fingerprint(model)
    for fingerprint, path in recorded:
        if fingerprint != actual:
            raise CheckpointError(f"{path}: trained beside another shared BERT (fingerprint {fingerprint[:12]}) "
                                  f"than {shared_bert} ({actual[:12]}): use the best_model.pth of the run that "
                                  f"wrote it, and adapter files of that one run")


def adapter_trained_with(adapter_files: Sequence[PathLike]) -> dict[str, Any]:
    """What the adapter files record of their training (``TRAINED_WITH_KEYS``: the
    vocabulary's fingerprint, lower-casing, max_seq_length), read from their metadata
    alone; {} for files of earlier versions. Files that disagree are refused."""
    from safetensors import safe_open
    found: dict[str, Any] = {}
    first: dict[str, PathLike] = {}
    for path in adapter_files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except FileNotFoundError:
            raise CheckpointError(f"{path}: adapter checkpoint not found") from None
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
        for key in TRAINED_WITH_KEYS:
            if key not in metadata:
                continue
            value = metadata[key] if key == "vocab_sha256" else json.loads(metadata[key])
            if key in found and found[key] != value:
                raise CheckpointError(f"{path}: trained with {key} {value}, but {first[key]} with "
                                      f"{found[key]}: these adapter files do not come from one run")
            found.setdefault(key, value)
            first.setdefault(key, path)
    return found


def _load_task_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor], task_id: int, path) -> None:
    """Load one task's adapter file (keys under task index 0) into task ``task_id``."""
    expected = {modeling.key_for_task(key, 0): value for key, value in unique_state_dict(model).items()
                if modeling.task_of_key(key) == task_id}
    check_state_dict(tensors, expected, path)
    model.load_state_dict({modeling.key_for_task(key, task_id): tensor for key, tensor in tensors.items()}, strict=False)
