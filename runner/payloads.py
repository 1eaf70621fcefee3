"""What job arguments and results may hold: JSON that PostgreSQL's jsonb accepts."""

from __future__ import annotations

import json
from typing import Any

# Results larger than this, as JSON text in bytes, are not stored.
MAX_RESULT_BYTES = 1 << 20


def problem(value: Any) -> str | None:
    """Why jsonb would refuse `value`, or None when it accepts it."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return str(exc) or type(exc).__name__
    # jsonb has no NUL character, and json.dumps escapes lone surrogates.
    if "\\u0000" in text:
        return "text with a NUL character (\\u0000)"
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "text that is not valid Unicode (a lone surrogate)"
    return None


def storable_result(value: Any) -> Any:
    """The handler's return value as stored, or a note saying why it was not."""
    why = problem(value)
    if why is None and len(json.dumps(value)) > MAX_RESULT_BYTES:
        why = f"larger than {MAX_RESULT_BYTES} bytes"
    if why is None:
        return value
    return {"unstored_result": f"the handler's result was not stored: {why}"}
