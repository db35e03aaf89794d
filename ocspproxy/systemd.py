"""sd_notify(3) without a dependency: tell systemd the service is ready, reloading or stopping."""

from __future__ import annotations

import contextlib
import os
import socket

__all__ = ["notify"]


def notify(state: str) -> None:
    """One datagram to $NOTIFY_SOCKET (an abstract socket when it starts with '@'); nothing when
    the service does not run under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
    ):
        sock.connect(address)
        sock.sendall(state.encode())
