"""Bad input ends a command with one line naming the key and what was expected, exit status 2, not a traceback.

The three console scripts share this: :func:`one_line_errors` around the work, :func:`run_hydra_app` around a Hydra
app (whose composition errors — an unknown recipe, a misspelt key — Hydra would print over several lines with exit
status 1). ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from selfsup.runtime.files import NoSpaceError

# A config value or file the user gave is wrong (the config's own errors: Hydra's composition, OmegaConf's keys).
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NoSpaceError, HydraException, OmegaConfBaseException)


def _user_error(e: BaseException | None) -> BaseException | None:
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


def _report(prog: str, e: BaseException) -> None:
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    raise SystemExit(2) from None


def one_line_errors(prog: str):
    """Decorate a command's work: input errors print ``<prog>: error: <message>`` and exit with status 2."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                err = _user_error(e)
                if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                _report(prog, err)

        return run

    return wrap


def _raise(e: BaseException):
    raise e


def run_hydra_app(app, prog: str) -> None:
    """Run a ``@hydra.main`` app; Hydra's own errors (composition, overrides) are reported in one line, exit 2."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report

    def run_and_report(func):
        try:
            return func()
        except Exception as e:
            err, bug = _user_error(e), e
            if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":  # a bug: Hydra shows where it happened
                return original(lambda: _raise(bug))
            cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else None
            message = one_line(err) + (f"; {one_line(cause)}" if cause is not None else "")
            print(f"{prog}: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None

    hydra_utils.run_and_report = run_and_report
    try:
        app()
    finally:
        hydra_utils.run_and_report = original
