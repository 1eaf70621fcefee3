"""The built-in handlers, registered through the `runner.handlers` entry point."""

from handlers.basic import noop
from handlers.rotate_key import rotate_key
from handlers.send_webhook import send_webhook

__all__ = ["noop", "rotate_key", "send_webhook"]
