"""What the command-line scripts share: one-line errors, exit codes, --debug, stop
signals, logging and the output-folder lock.

A script's ``main`` is ``cli.run_main(run, args)``: it turns SIGINT/SIGTERM into
``StopRequested`` (so every atomic write removes its temporary file on the way out),
prints an expected error (``errors.Error`` or an OSError such as a full disk) as one
``error:`` line and exits 2, and leaves anything else (a bug) with its traceback.

    exit 0            done
    exit 2            bad input: one line on stderr (--debug or BERT_PALS_DEBUG=1 for
                      the traceback)
    exit 128 + N      stopped by signal N (during training after a resumable checkpoint)
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from errors import Error, StopRequested, UsageError

DEBUG_ENVIRONMENT_VARIABLE = "BERT_PALS_DEBUG"
EXIT_BAD_INPUT = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"show tracebacks instead of one-line errors (or set {DEBUG_ENVIRONMENT_VARIABLE}=1)")


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


@contextmanager
def on_stop_signals(handler: Callable[[int, object], None]) -> Iterator[None]:
    """Run ``handler(signum, frame)`` on SIGINT and SIGTERM inside the block (outside
    the main thread, where signals cannot be set, the block runs unchanged)."""
    previous = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for signum, saved in previous.items():
            signal.signal(signum, saved)


def stop_signals_raise():
    """Turn SIGINT and SIGTERM into ``StopRequested`` for the duration of the block.

    Without it, SIGTERM would end the process on the spot and leave temporary files;
    with it, the stack unwinds and every atomic write cleans up after itself. The
    training loop installs its own handler (checkpoint, then stop) inside this block.
    """
    def stop(signum, _frame):
        raise StopRequested(signum)

    return on_stop_signals(stop)


def run_main(run: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Run a script's ``run(args)`` with the exit codes above."""
    try:
        with stop_signals_raise():
            run(args)
    except (Error, OSError) as err:
        if debug_requested(getattr(args, "debug", False)):
            raise
        print(error_line(err), file=sys.stderr)
        return EXIT_BAD_INPUT
    except StopRequested as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return 128 + int(stop.signal_number)
    except KeyboardInterrupt:
        print("stopped: signal 2; no partial files were left behind", file=sys.stderr)
        return 128 + int(signal.SIGINT)
    return 0


def setup_logging(log_file: Path | None = None, is_main: bool = True) -> None:
    """INFO to stderr (WARNING on ranks other than 0), and to ``log_file`` if given.

    Without a log file, logging that is already set up (a notebook, pytest) is left alone.
    """
    level = logging.INFO if is_main else logging.WARNING
    if log_file is None:
        logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S")
        return
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if is_main:
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level, handlers=handlers, force=True, format=LOG_FORMAT, datefmt="%H:%M:%S")


class OutputDirLock:
    """An exclusive lock on an output folder, so two runs never write the same files.

    ``flock`` on ``<folder>/.lock``: released by the kernel when the process ends,
    however it ends (a SIGKILL leaves no stale lock; the file itself is harmless).
    """

    FILE_NAME = ".lock"

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / self.FILE_NAME
        self._handle = None

    def acquire(self) -> OutputDirLock:
        import fcntl
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
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

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
