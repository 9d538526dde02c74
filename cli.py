"""What the command-line scripts share: one-line errors, exit codes, --debug, stop
signals, logging, progress reports, --help's layout and the output-folder lock.

A script's ``main`` is ``cli.run_main(run, args)``: it turns SIGINT/SIGTERM into
``StopRequested`` (so every atomic write removes its temporary file on the way out),
prints an expected error (``errors.Error`` or an OSError) as one ``error:`` line and
exits 2, and leaves anything else (a bug) with its traceback. A file that could not be
written (a full disk, a file-size limit, an I/O error) is an ``errors.WriteError``
from checkpointing's atomic writer, whatever library raised it: the line names the
file, why, and what is intact. A log file that can no longer be written costs one
``warning:`` line, not a traceback per record.

    exit 0            done
    exit 2            bad input, or a file that could not be written: one line on
                      stderr (--debug or BERT_PALS_DEBUG=1 for the traceback)
    exit 128 + N      stopped by signal N (during training after a resumable checkpoint)

The ``error:`` and ``stopped:`` lines also go to the log file if one is set up
(``train.log``), so a run's log ends with why it ended.
"""
from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from errors import Error, StopRequested, UsageError

DEBUG_ENVIRONMENT_VARIABLE = "BERT_PALS_DEBUG"
EXIT_BAD_INPUT = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_LOGGER = "progress"  # plain progress lines: stderr only, never the log file
PROGRESS_INTERVAL_SECONDS = 30.0  # without a terminal, one progress line this often
ASSUMED_TERMINAL_WIDTH = 80  # a terminal stand-in without a file descriptor (tqdm's own default)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's line breaks and shows every option's default
    ("(default: 5e-05)"); defaults that say nothing (None, False) are left out, and so
    is the value where the help text already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"show tracebacks instead of one-line errors (or set {DEBUG_ENVIRONMENT_VARIABLE}=1)")


def add_adapter_module_flag(parser) -> None:
    """--adapter_module FILE: an adapter defined in the user's own Python file
    (loaded with modeling.load_adapter_module before any model is built)."""
    parser.add_argument("--adapter_module", metavar="FILE",
                        help="a Python file that registers an adapter (modeling.register_adapter(name, cls)), "
                             "which a config selects with \"adapter\": name")


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
            log_to_files(logging.ERROR, error_line(err))
            raise
        return _final_line(error_line(err), EXIT_BAD_INPUT)
    except StopRequested as stop:  # asked for (Ctrl-C, a scheduler's SIGTERM): not an error
        return _final_line(f"stopped: {stop}", 128 + int(stop.signal_number), logging.WARNING)
    except KeyboardInterrupt:
        return _final_line("stopped: signal 2; no partial files were left behind", 128 + int(signal.SIGINT),
                           logging.WARNING)
    except BaseException as err:  # a bug: the traceback goes to stderr as usual, and to the log
        log_to_files(logging.ERROR, f"crashed: {type(err).__name__}: {err}", exc_info=True)
        raise
    return 0


def _final_line(line: str, status: int, level: int = logging.ERROR) -> int:
    print(line, file=sys.stderr)
    log_to_files(level, line)
    return status


def log_to_files(level: int, message: str, exc_info: bool = False) -> None:
    """Write one record to the log files only (train.log), not to stderr: for what the
    script prints on stderr itself (the final ``error:`` or ``stopped:`` line)."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not handlers:
        return
    record = logging.getLogger("cli").makeRecord("cli", level, __file__, 0, message, None,
                                                 sys.exc_info() if exc_info else None)
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


class TerminalSafeHandler(logging.StreamHandler):
    """Log lines on stderr that never share a line with a progress bar: on a terminal
    each record goes through ``tqdm.write``, which clears the bars, writes the line and
    draws them again; elsewhere it is a plain StreamHandler."""

    def emit(self, record: logging.LogRecord) -> None:
        if not is_terminal(self.stream):
            super().emit(record)
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # what logging.StreamHandler does with a failing record
            self.handleError(record)


class LogFileHandler(logging.FileHandler):
    """The log file (train.log). When a record cannot be written (the disk is full),
    logging would print a traceback for it and for every later record; this prints
    one ``warning:`` line on stderr instead and writes no further records to the file
    (stderr still gets them)."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            super().handleError(record)  # a bad record (a format error): logging's own report
            return
        if not self.failed:
            self.failed = True
            reason = (err.strerror or str(err) or type(err).__name__).lower()
            print(f"warning: {self.baseFilename}: log lines cannot be written ({reason}); from now on they go "
                  f"to stderr only", file=sys.stderr)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # flushing what a full disk refused fails again; the file is closed all the same
            if not self.failed:
                raise


class _NotProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != PROGRESS_LOGGER


def setup_logging(log_file: Path | None = None, is_main: bool = True) -> None:
    """INFO to stderr (WARNING on ranks other than 0), and to ``log_file`` if given
    (appended; plain progress lines stay out of it).

    Without a log file, logging that is already set up (a notebook, pytest) is left alone.
    """
    level = logging.INFO if is_main else logging.WARNING
    stderr = TerminalSafeHandler(sys.stderr)
    if log_file is None:
        logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S", handlers=[stderr])
        return
    handlers: list[logging.Handler] = [stderr]
    if is_main:
        log = LogFileHandler(log_file, encoding="utf-8")
        log.addFilter(_NotProgress())
        handlers.append(log)
    logging.basicConfig(level=level, handlers=handlers, force=True, format=LOG_FORMAT, datefmt="%H:%M:%S")


# --------------------------------------------------------------------------------------
# Progress of long loops
# --------------------------------------------------------------------------------------

def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def terminal_width(stream: TextIO) -> int:
    """Columns of the terminal ``stream`` writes to; 0 when unknown (not a terminal, or
    one that reports no size, such as the pseudo-terminal of ``script`` without a
    window, where a progress bar of width 0 would show nothing at all)."""
    if not is_terminal(stream):
        return 0
    try:
        descriptor = stream.fileno()
    except (AttributeError, ValueError, OSError):  # a stand-in stream that says it is a terminal
        return ASSUMED_TERMINAL_WIDTH
    try:
        return os.get_terminal_size(descriptor).columns
    except OSError:
        return 0


def format_duration(seconds: float) -> str:
    """12s, 4m05s, 3h07m (rounded to whole seconds; '?' when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


class Progress:
    """How far a long loop has come, for every long loop of the scripts (training
    epochs, evaluation, reading tasks, feature extraction).

    On a terminal of known width: a tqdm bar. Anywhere else (stderr redirected to a file,
    as in every cluster job, or a terminal that reports no size): no bar and no
    carriage returns, but one plain line every
    ``interval`` seconds through the ``progress`` logger, which reaches stderr and not
    train.log::

        12:00:30 INFO progress: epoch 0: 130/300 steps (43%), 30s elapsed, ETA 39s, 4.33 steps/s, task sst, loss 0.5121

    ``enabled=False`` (ranks other than 0) reports nothing.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, interval: float | None = None):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.count = initial
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interval = PROGRESS_INTERVAL_SECONDS if interval is None else interval
        self.postfix: dict[str, Any] = {}
        self._initial = initial
        self._started = self._last_line = time.monotonic()
        self._lines_written = 0
        self._last_count = initial  # the count the last plain line showed
        self._bar = None
        if enabled and terminal_width(self.stream) > 0:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more done; ``postfix`` (e.g. task, loss) is shown beside the count."""
        self.count += n
        if postfix:
            self.postfix = postfix
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval:
            self._write_line()

    def line(self) -> str:
        """The plain progress line (without the log prefix)."""
        elapsed = time.monotonic() - self._started
        done = self.count - self._initial
        rate = done / elapsed if elapsed > 0 else math.nan
        parts = [f"{self.desc}: {self.count}" + (f"/{self.total}" if self.total else "") + f" {self.unit}s"]
        if self.total:
            parts[0] += f" ({100 * self.count / self.total:.0f}%)"
        parts.append(f"{format_duration(elapsed)} elapsed")
        if self.total and rate > 0:
            parts.append(f"ETA {format_duration((self.total - self.count) / rate)}")
        if rate == rate:  # not NaN
            parts.append(f"{rate:.2f} {self.unit}s/s")
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        return ", ".join(parts)

    def _write_line(self) -> None:
        logging.getLogger(PROGRESS_LOGGER).info(self.line())
        self._last_line = time.monotonic()
        self._lines_written += 1
        self._last_count = self.count

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._lines_written and self.count != self._last_count:
            self._write_line()  # a long loop: say where it ended

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


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
        try:  # unbuffered, and only for the message above: a full disk must not stop the run here
            os.ftruncate(handle.fileno(), 0)
            os.write(handle.fileno(), f"{os.getpid()}\n".encode())  # (opened to append: lands at 0)
        except OSError:
            pass
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
