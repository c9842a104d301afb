"""The one exception a user should ever see from torchslim.

Anything the user can fix (a recipe field, a path, a model name, a corrupt file) raises :class:`TorchslimError` with
one line that names the problem and, where there is a list, the valid choices. The CLI prints that line and exits
with code 2; everything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class TorchslimError(Exception):
    """A problem in the user's input, reported as one line (CLI exit code 2)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_choice(kind: str, name: str, choices: Iterable[str]) -> TorchslimError:
    """Error for a name that is not one of the valid choices, with a did-you-mean hint."""
    choices = sorted(choices)
    return TorchslimError(
        f"unknown {kind} '{name}'{did_you_mean(name, choices)}; valid choices: {', '.join(choices)}"
    )
