"""One way to report user errors: exception types every entry point turns into one line + exit 1.

A user error is a mistake or a fault the user can fix (bad config key, missing or corrupt file, wrong
shape, full disk, unsafe checkpoint); its message names the file/key and what was expected, so a
traceback would only hide it. Module-specific errors (``FlameLoadError`` in utils/safe_pickle.py,
``AudioEncoderLoadError`` in models/wav2vec.py, ``EvalError``, ``RenderError``) stay where they are raised
and subclass ``UserError``; the ones shared
by several modules live here (``DataError``: every dataset/ module; ``ConfigError``: the config and
everything that reads it; ``InferenceError``: every stage of the inference pipeline).

An interrupt (Ctrl-C, SIGTERM) is not an error: ``Interrupted`` carries the one line that says how
to continue, and the entry point exits 128 + signal number (130 for SIGINT, 143 for SIGTERM).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys


class UserError(Exception):
    """Base of every error a user can cause or fix; reported as one line, exit status 1."""

    def __init__(self, *args):
        # A DataLoader worker's error reaches the main process rebuilt from the worker's whole traceback
        # ("Caught X in DataLoader worker process N.\nOriginal Traceback ...\nmodule.X: message"): keep the line.
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "\nOriginal Traceback" in args[0]:
            args = (args[0].rstrip("\n").rsplit(f"{type(self).__name__}: ", 1)[-1],)
        super().__init__(*args)


class DataError(UserError, ValueError):
    """A bad data file or index entry. The message names the JSON file, sample id and data file."""


class ConfigError(UserError, ValueError):
    """A problem in a config file or an override, with the file/key named in the message."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: missing, truncated/corrupt, unsafe (objects outside the
    allow-list) or not fitting the model; the message names the file."""


class ResultsError(UserError, RuntimeError):
    """The results tree cannot be written or read as asked: existing or incomplete results, a folder
    that is not writable, not enough free space, a failed write, a missing/torn/wrong-shaped frame file."""


class InferenceError(UserError, RuntimeError):
    """Inference cannot run as asked (bad audio, unknown style, existing results, ...); the message
    names the file, key or folder and what was expected."""


class ExportError(UserError, ValueError):
    """A result cannot be exported as asked (main/export.py): a rig or mesh file of the wrong kind or
    topology, non-finite values, nothing to export; the message names the file and what was expected."""


class AudioError(InferenceError):
    """An audio file that cannot be used: missing, empty, corrupt or shorter than one frame."""


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM arrived; ``str()`` is the line telling the user how to continue. A KeyboardInterrupt
    (BaseException), so the ``except Exception`` of a file reader cannot turn it into a data error."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def _raise_interrupted(signum, _frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupts_raise():
    """Within the block SIGINT and SIGTERM raise ``Interrupted`` (SIGTERM would otherwise kill the
    process without running any ``finally``: temporary files would stay behind). Main thread only."""
    old = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, _raise_interrupted)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:  # SIGINT before the handler was installed, or raised by a library
        raise Interrupted(signal.SIGINT) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_reporting_user_errors(prog: str, main, argv=None, logger: logging.Logger | None = None):
    """``main(argv)`` with user errors ended as ``prog: message`` and exit status 1, and interrupts as
    their how-to-continue line and exit status 128 + signal. The message also goes to ``logger`` (the
    run's log file) when given."""
    try:
        with interrupts_raise():
            return main(argv)
    except UserError as e:
        _report(prog, e, logger)
        raise SystemExit(1) from None
    except Interrupted as e:
        _report(prog, e, logger)
        raise SystemExit(e.exit_code) from None


def _report(prog: str, e: Exception, logger: logging.Logger | None):
    if logger is not None and logger.handlers:
        logger.error("%s", e)
    else:
        print(f"{prog}: {e}", file=sys.stderr)
