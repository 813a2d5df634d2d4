"""User errors vs bugs.

A :class:`UserError` is something the person running rightsizer can fix (a bad config key, a
missing file, a data set with one class). The CLI prints it as one line starting ``error:`` and
exits with code 2, without a traceback. Anything else is a bug and is allowed to crash loudly.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input; the message says what was wrong and what to do."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' hint, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def one_of(choices: Iterable[str]) -> str:
    """Format a list of valid choices for an error message."""
    return ", ".join(sorted(str(c) for c in choices))
