"""User errors end a process with one message, not a traceback.

A params.yaml value or a catalog the code cannot use is the user's to fix: the message says what,
where (file, row or key) and how. Anything else is a bug, and keeps its traceback.
"""
from __future__ import annotations

import sys
from types import TracebackType

from pydantic import ValidationError


class UserError(Exception):
    """Raised with a message that tells the user what to fix (ParamsError, CatalogError)."""


def _report(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    if isinstance(error, (UserError, ValidationError)):
        print(error, file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, tb)


def exit_on_user_errors() -> None:
    """From now on an uncaught user error prints its message to stderr and the process exits 1
    (Python's status for an uncaught exception); other exceptions print their traceback as usual."""
    sys.excepthook = _report
