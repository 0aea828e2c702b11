"""One-line descriptions of bad input: validation errors (the field path and the problem) and
the kind of a JSON value where another was expected."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

_MAX_PROBLEMS = 5


def field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """``("transcript", 3, "start_timestamp")`` -> ``transcript[3].start_timestamp``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{part}"
        else:
            path = str(part)
    return path


def json_kind(value: object) -> str:
    """What a parsed JSON value is, in JSON's words: ``an array``, ``null``, ``a string``...
    (never the value itself: it may hold transcript text)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"  # not from a JSON parser


def _describe(error: ErrorDetails, prefix: str) -> str:
    message = error["msg"].removeprefix("Value error, ")
    # Union members add their type name to the location; drop those for readability.
    loc = [p for p in error["loc"] if not (isinstance(p, str) and "[" in p)]
    path = field_path(loc, prefix)
    if error["type"] == "missing":
        message = "required field is missing"
    elif error["type"] not in ("value_error", "assertion_error"):
        message = f"{message} (got {type(error['input']).__name__})"
    if not path:
        return message
    if message.startswith(f"{path}:"):
        return message  # a model validator that already names its field
    return f"{path}: {message}"


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """All problems of ``exc`` on one line, each as ``path: problem``, joined by ``; ``.

    Input values are named by type only, so that transcript text never leaks into a log.
    """
    errors = exc.errors(include_url=False)
    parts = [_describe(e, prefix) for e in errors[:_MAX_PROBLEMS]]
    if len(errors) > _MAX_PROBLEMS:
        parts.append(f"and {len(errors) - _MAX_PROBLEMS} more problems")
    return "; ".join(dict.fromkeys(parts))
