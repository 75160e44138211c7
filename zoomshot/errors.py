"""User-facing errors: one line, no traceback, non-zero exit (the CLI turns them into exit code 2)."""
from __future__ import annotations

import difflib
from typing import Iterable


class ZsError(Exception):
    """A mistake in the user's input or environment, told in one line."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a one-line error."""
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def did_you_mean(name: str, choices: Iterable[str], n: int = 5) -> str:
    """' (did you mean: a, b?)' for the close matches of name among choices, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
