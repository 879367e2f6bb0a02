"""Bad input ends a command with one line naming the key and what was expected, not a traceback."""

from __future__ import annotations

import functools
import os
import sys

from omegaconf.errors import ConfigKeyError, MissingMandatoryValue

USER_ERRORS = (ValueError, FileNotFoundError, MissingMandatoryValue, ConfigKeyError)


def _user_error(e: BaseException | None) -> BaseException | None:
    """The first input error in ``e``'s cause chain (Hydra's instantiate wraps constructor errors)."""
    while e is not None:
        if isinstance(e, USER_ERRORS):
            return e
        e = e.__cause__
    return None


def one_line_errors(prog: str):
    """Decorate a Hydra task function: input errors print ``<prog>: error: <message>`` and exit with status 2.

    ``HYDRA_FULL_ERROR=1`` re-raises them with the full traceback.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                err = _user_error(e)
                if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                print(f"{prog}: error: {message}", file=sys.stderr)
                raise SystemExit(2) from None

        return run

    return wrap
