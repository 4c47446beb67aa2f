"""The ``taskgate`` command (``commands``) and ``taskgate up``, the embedded stack."""
