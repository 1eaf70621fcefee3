"""The built-in handlers, registered through the `runner.handlers` entry point."""

from handlers.basic import noop
from handlers.rotate_key import rotate_key

__all__ = ["noop", "rotate_key"]
