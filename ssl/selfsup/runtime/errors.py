"""Bad input ends a command with one line naming the key and what was expected, exit status 2, not a traceback.

The console scripts share this: :func:`one_line_errors` around the work, :func:`run_hydra_app` around a Hydra app
(whose composition errors — an unknown recipe, a misspelt key — Hydra would print over several lines with exit
status 1). ``HYDRA_FULL_ERROR=1`` shows the traceback instead. :func:`exit_with_error` is the one place that prints
that line and exits; every command and check that ends in one line (a sweep's pre-launch check too) calls it.

:func:`run_hydra_app` also quotes path values for Hydra (:func:`quote_path_values`): a sweep writes its runs into
directories named by the swept keys (``multirun/<date>/<time>/objective.temperature=0.2``, docs/runs.md), which
Hydra's override grammar cannot read unquoted; and a run directory Hydra cannot create or write its job log in is
named in one line.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from selfsup.runtime.files import NoSpaceError

# A config value or file the user gave is wrong (the config's own errors: Hydra's composition, OmegaConf's keys).
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NoSpaceError, HydraException, OmegaConfBaseException)


def user_error(e: BaseException | None) -> BaseException | None:
    """The first input error in ``e``'s cause chain (Hydra's instantiate wraps constructor errors; a constructor's
    ``TypeError`` is a config value of the wrong type)."""
    from hydra.errors import InstantiationException

    while e is not None:
        if isinstance(e, InstantiationException):  # a constructor's own error, or a bad _target_
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if isinstance(e.__cause__, TypeError) or first.startswith("Error locating target"):
                return ValueError(first)  # "Error in call to target '...': TypeError(...)"
        elif isinstance(e, USER_ERRORS):
            return e
        e = e.__cause__
    return None


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line. A DataLoader worker's error (re-raised in the main process with the
    worker's traceback as its text) becomes the worker's own message."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[0].startswith("Caught ") and "Original Traceback" in text:  # torch.utils.data._utils.ExceptionWrapper
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    if len(lines) > 1 and lines[1].endswith(":"):  # Hydra: "Could not find ...", "Available options in ...:", items
        return f"{lines[0]}; {lines[1]} {', '.join(lines[2:])}"
    return " ".join(lines[:2]) if isinstance(e, HydraException | OmegaConfBaseException) else lines[0]


_program: str | None = None  # the command run_hydra_app runs


def program() -> str:
    """The name of the running command (``selfsup-train``): the one :func:`run_hydra_app` runs, else the script's."""
    return _program or Path(sys.argv[0]).name or "selfsup"


@contextlib.contextmanager
def running_as(prog: str):
    """While inside, :func:`program` is ``prog`` (what :func:`run_hydra_app` sets for its app)."""
    global _program
    previous, _program = _program, prog
    try:
        yield
    finally:
        _program = previous


def exit_with_error(error: str | BaseException, prog: str | None = None) -> NoReturn:
    """The one-line error exit: print ``<prog>: error: <message>`` (``error``'s :func:`one_line` message) to stderr
    and exit with status 2. ``prog`` defaults to the running command (:func:`program`)."""
    message = error if isinstance(error, str) else one_line(error)
    print(f"{prog or program()}: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def one_line_errors(prog: str):
    """Decorate a command's work: input errors print ``<prog>: error: <message>`` and exit with status 2."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                err = user_error(e)
                if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                exit_with_error(err, prog)

        return run

    return wrap


def key_values(
    argv: list[str],
    kinds: dict[str, type],
    usage: str,
    required: tuple[str, ...] = (),
    defaults: dict | None = None,
    choices: dict[str, tuple[str, ...]] | None = None,
) -> dict:
    """The ``key=value`` arguments of the commands that are not Hydra apps (``selfsup-shards``, ``selfsup-subset``,
    ``selfsup-export``), read as the Hydra ones are written: ``kinds`` maps each key to ``str``, ``int``, ``float`` or
    ``bool`` (``true``/``false``). A value is everything after the first ``=`` (a sweep point's directory,
    ``.../optim.lr=0.1``, needs no quotes); a value quoted for Hydra (``checkpoint='...'``) is read without its
    quotes. An unknown key, a value of the wrong kind or outside ``choices``, or a ``required`` key missing raise a
    one-line ValueError naming it."""
    args = dict(defaults or {})
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in kinds:
            raise ValueError(f"argument {arg!r}: expected key=value with key one of {list(kinds)}; {usage}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        kind = kinds[key]
        try:
            if kind is bool and value.lower() not in ("true", "false"):
                raise ValueError
            args[key] = value.lower() == "true" if kind is bool else kind(value)
        except ValueError:
            raise ValueError(f"{key}={value}: expected {'true or false' if kind is bool else kind.__name__}") from None
        if choices and key in choices and value not in choices[key]:
            raise ValueError(f"{key}={value}: expected one of {list(choices[key])}")
    missing = [k for k in required if not args.get(k)]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set: {usage}")
    return args


def run_command(prog: str, usage: str, argv: list[str] | None, work):
    """A key=value command's ``main``: ``-h``/``--help`` prints ``usage``; otherwise INFO logging to the terminal
    and ``work(argv)`` (argv defaults to ``sys.argv[1:]``), whose input errors end in one line
    (:func:`one_line_errors`). Returns what ``work`` returns (None after ``--help``)."""
    import logging

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        return None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return one_line_errors(prog)(work)(argv)


# Keys whose values are paths: a value Hydra's override grammar cannot read as one string (a sweep point's directory
# holds "=" and ","; brackets, "#", "~") is passed to Hydra quoted.
PATH_KEYS = frozenset(
    {
        "hydra.run.dir",
        "hydra.sweep.dir",
        "checkpoint",
        "ckpt_path",
        "init_from",
        "out",
        "features",
        "data.root",
        "data.train_dir",
        "data.val_dir",
    }
)
_PLAIN = (str, int, float, bool, type(None))
_UNREADABLE = object()


def _hydra_quoted(value: str) -> str:
    """``value`` as one single-quoted string of Hydra's override grammar: quotes escaped, and the backslashes before
    an escaped quote or the closing quote doubled (Hydra reads ``\\`` there as one backslash)."""
    inner = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    inner = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, inner)
    return f"'{inner}'"


def quote_path_values(argv: list[str]) -> list[str]:
    """``argv`` with the value of each path key (:data:`PATH_KEYS`, with or without ``+``/``++``) quoted where Hydra
    could not read it as that one string (``hydra.run.dir=multirun/d/t/optim.lr=0.1,seed=1`` is a parse error, or
    a sweep over two values); values Hydra reads as they are (``null``, ``last``, plain paths, quoted ones) stay."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def reads_as(arg: str):
        try:
            parsed = parser.parse_override(arg)
        except HydraException:
            return _UNREADABLE
        value = parsed.value()
        return value if not parsed.is_sweep_override() and isinstance(value, _PLAIN) else _UNREADABLE

    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in PATH_KEYS and value and reads_as(arg) is _UNREADABLE:
            quoted = f"{key}={_hydra_quoted(value)}"
            if reads_as(quoted) == value:  # else leave it: Hydra's own error names it
                arg = quoted
        out.append(arg)
    return out


def _override_hint(e: OverrideParseException) -> str:
    """Hydra's parse error, naming the override and how to quote a value."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else "cannot parse it"
    return (
        f"{e.override}: {first}; expected key=value: quote a value holding '=', ',', brackets or spaces for Hydra, "
        """e.g. 'key="a=b"' in the shell"""
    )


def _in_selfsup(tb) -> bool:
    """Whether a traceback passes through selfsup's own code (beyond this module): the job ran, Hydra's set-up
    did not fail."""
    package, here = Path(__file__).resolve().parents[1], Path(__file__).resolve()
    while tb is not None:
        path = Path(tb.tb_frame.f_code.co_filename).resolve()
        if path != here and package in path.parents:
            return True
        tb = tb.tb_next
    return False


# OS errors of a directory that cannot be created or written (not there at all: FileNotFoundError is Hydra's bug)
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST}


def _unwritable_run_dir(e: BaseException) -> str | None:
    """One line for a run directory that Hydra could not create, or its job log (``<run dir>/train.log``) that
    Hydra's logging set-up could not open — before the job starts; None for any other error."""
    os_error = e
    if isinstance(e, ValueError) and str(e).startswith("Unable to configure handler"):
        os_error = e.__cause__
    if not isinstance(os_error, OSError) or os_error.errno not in _UNWRITABLE or _in_selfsup(e.__traceback__):
        return None
    key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in sys.argv[1:]) else "hydra.run.dir"
    reason = f"[Errno {os_error.errno}] {os_error.strerror}"
    if os_error is not e and os_error.filename:  # the job log
        path = Path(os_error.filename)
        return f"{key}={path.parent}: cannot write {path.name} there ({reason}); expected a writable run directory"
    return f"{key}: cannot create {os_error.filename} ({reason}); expected a writable run directory"


def check_output_dir(key: str, value) -> Path:
    """The directory ``<key>=<value>`` names for a command's output (created later if missing), refused in one line
    before any work when it, or a folder above it, is a file."""
    path = Path(str(value)).expanduser()
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                where = "is a file" if folder == path else f"{folder} is a file"
                raise ValueError(f"{key}={value}: {where}; expected a directory (created if missing)")
            break
    return path


def _raise(e: BaseException):
    raise e


def run_hydra_app(app, prog: str) -> None:
    """Run a ``@hydra.main`` app on ``sys.argv`` with its path values quoted (:func:`quote_path_values`); Hydra's
    own errors (composition, overrides, a run directory it cannot write) are reported in one line, exit 2.
    While it runs, ``prog`` is the running command (:func:`program`)."""
    from selfsup.runtime import compat

    def report(func, original):
        try:
            return func()
        except Exception as e:
            bug = e
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                return original(lambda: _raise(bug))
            message = _unwritable_run_dir(e)
            if message is None:
                err = user_error(e)
                if err is None:  # a bug: Hydra shows where it happened
                    return original(lambda: _raise(bug))
                cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else None
                message = one_line(err) + (f"; {one_line(cause)}" if cause is not None else "")
                if isinstance(err, OverrideParseException):
                    message = _override_hint(err)
            exit_with_error(message, prog)

    argv = sys.argv[:]
    sys.argv[1:] = quote_path_values(sys.argv[1:])  # Lightning's DDP launcher re-runs sys.argv: kept while app runs
    try:
        with running_as(prog), compat.hydra_error_report(report):
            app()
    finally:
        sys.argv[:] = argv
