"""Small handlers for trying the runner out and for measuring it."""

from __future__ import annotations

from typing import Any

from runner.registry import handler


@handler
def noop(**args: Any) -> None:
    """Do nothing: accepts any arguments."""
