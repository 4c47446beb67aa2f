"""The ``taskgate`` command and ``taskgate up`` (the embedded stack)."""

from gateway.cli.commands import main

__all__ = ["main"]
