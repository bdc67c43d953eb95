"""A free TCP port for a launch (torchrun's rendezvous), asked of the OS at the moment of use."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port nobody listens on now. Ask again for every launch: a neighbour of the last one (``port + 1``)
    may be held by that run's gloo connections."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
