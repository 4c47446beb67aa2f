"""Socket.IO: the event handlers (``submit``, ``cancel``, ``watch``) and the packet guard."""
