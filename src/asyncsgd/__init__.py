"""asyncsgd: asynchronous SGD for PyTorch, measured side by side against synchronous training."""

__version__ = "0.1.0"

from .api import train  # noqa: E402,F401
