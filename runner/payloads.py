"""What job arguments and results may hold: JSON that PostgreSQL's jsonb accepts."""

from __future__ import annotations

import json
import re
from typing import Any

# Results larger than this, as JSON text in bytes, are not stored.
MAX_RESULT_BYTES = 1 << 20
# The escape of a NUL character in JSON text: \u0000 after an even number of
# backslashes (an odd number escapes the backslash itself).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def problem(value: Any) -> str | None:
    """Why jsonb would refuse `value`, or None when it accepts it."""
    return _encode(value)[1]


def _encode(value: Any) -> tuple[bytes, str | None]:
    """`value` as UTF-8 JSON text, and why jsonb would refuse it (None: it would
    not)."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return b"", str(exc) or type(exc).__name__
    # jsonb has no NUL character; json.dumps writes it as an escape.
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        return b"", "text with a NUL character (\\u0000)"
    try:
        return text.encode("utf-8"), None
    except UnicodeEncodeError:
        return b"", "text that is not valid Unicode (a lone surrogate)"


def storable_result(value: Any) -> Any:
    """The handler's return value as stored, or a note saying why it was not."""
    if value is None:
        return None
    encoded, why = _encode(value)
    if why is None and len(encoded) > MAX_RESULT_BYTES:
        why = f"larger than {MAX_RESULT_BYTES} bytes"
    if why is None:
        return value
    return {"unstored_result": f"the handler's result was not stored: {why}"}
