"""The project's errors: one base class, one-line messages.

Every expected failure (bad input, a bad file, a bad config) raises a subclass of
``Error`` whose message is one line naming the file, line, key or flag. The scripts
print it as ``error: <message>`` and exit with status 2 (see cli.py); anything else is
a bug and keeps its traceback. ``Error`` is a ``ValueError`` so that library callers
who catch ValueError keep working.

This module imports nothing of the project, so every module may import it.
"""
from __future__ import annotations

import errno as errno_codes
from pathlib import Path


class Error(ValueError):
    """An expected failure with a one-line message."""


class UsageError(Error):
    """A command line or API call that cannot be carried out."""


class ConfigError(Error):
    """A model configuration that cannot be built (names the key)."""


class CheckpointError(Error):
    """A weights or checkpoint file that cannot be read or does not fit (names the key)."""


class ConversionError(CheckpointError):
    """A TensorFlow checkpoint that cannot be converted (names the variable)."""


class DataError(Error):
    """A data file that cannot be read (names the file and line)."""


class VocabError(DataError):
    """A vocabulary file that cannot be used."""


class WriteError(Error):
    """A file that could not be written, whatever the cause (a full disk, a file-size
    limit, an I/O error, lost permission) and whatever raised it (the OS, torch,
    safetensors). Raised by checkpointing's atomic writer, which names the file, says
    why, and what is still intact; a caller that knows more (the training loop: which
    checkpoint can be resumed) replaces ``intact``. The message is one line::

        could not write out/checkpoints/last.pt: no space left on device, about 92 MB
        needed (3.1 MB free); the checkpoint of step 40 in out/checkpoints/last.pt is
        intact: free space and add --resume
    """

    def __init__(self, path: str | Path, reason: str, intact: str, errno: int | None = None):
        super().__init__(path, reason, intact)
        self.path = Path(path)
        self.reason = reason
        self.intact = intact
        self.errno = errno  # the cause, where known (ENOSPC, EFBIG ...)

    @property
    def out_of_space(self) -> bool:
        return self.errno in (errno_codes.ENOSPC, errno_codes.EDQUOT)

    def __str__(self) -> str:
        return f"could not write {self.path}: {self.reason}; {self.intact}"


class NonFiniteLossError(Error):
    """The training loss or the model's parameters became NaN or infinite."""


class StopRequested(BaseException):
    """SIGINT or SIGTERM: unwind, removing temporary files, and exit 128 + signal.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` blocks do not
    swallow it; the atomic writer removes its temporary file on the way out.
    """

    def __init__(self, signal_number: int, checkpoint: Path | None = None, message: str | None = None):
        if message is None and checkpoint is None:
            message = f"signal {signal_number}; no partial files were left behind"
        elif message is None:
            message = f"signal {signal_number}; resume with --resume ({checkpoint})"
        super().__init__(message)
        self.signal_number = signal_number
        self.checkpoint = checkpoint
