"""One-line descriptions of bad input: validation errors (the field path and the problem) and
the kind of a JSON value where another was expected."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

_MAX_PROBLEMS = 5
#: caps, in characters: a field name, one problem, and the whole description. A description
#: goes into a 422 answer and a log line; nothing in it may grow with the request body.
_MAX_PART_CHARS = 64
_MAX_PROBLEM_CHARS = 240
MAX_DESCRIPTION_CHARS = 1000


def cap(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """``("transcript", 3, "start_timestamp")`` -> ``transcript[3].start_timestamp``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif path:
            path += f".{cap(part, _MAX_PART_CHARS)}"
        else:
            path = cap(str(part), _MAX_PART_CHARS)
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
        return cap(message, _MAX_PROBLEM_CHARS)
    if message.startswith(f"{path}:"):
        return cap(message, _MAX_PROBLEM_CHARS)  # a model validator that already names its field
    return cap(f"{path}: {message}", _MAX_PROBLEM_CHARS)


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """All problems of ``exc`` on one line, each as ``path: problem``, joined by ``; ``.

    Input values are named by type only, so that transcript text never leaks into a log
    (our own validators' messages never quote their input either); at most
    :data:`MAX_DESCRIPTION_CHARS` characters.
    """
    errors = exc.errors(include_url=False)
    parts = [_describe(e, prefix) for e in errors[:_MAX_PROBLEMS]]
    if len(errors) > _MAX_PROBLEMS:
        parts.append(f"and {len(errors) - _MAX_PROBLEMS} more problems")
    return cap("; ".join(dict.fromkeys(parts)), MAX_DESCRIPTION_CHARS)
