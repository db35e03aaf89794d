"""What one end of a worker channel has yet to send: messages in order, without blocking the event
loop. Used by both ends (``workers.py``, ``worker.py``)."""

from __future__ import annotations

import asyncio
import collections
import os
import socket
from collections.abc import Callable, Iterator

__all__ = ["Outbox"]


class Outbox:
    """Sends on a non-blocking SOCK_SEQPACKET socket; when it is full, waits for it to drain. A send
    error calls ``on_error`` once (the channel is then unusable)."""

    def __init__(self, sock: socket.socket, on_error: Callable[[], None]) -> None:
        self.sock = sock
        self.on_error = on_error
        # A message with the descriptor to pass along (closed here once sent), or messages made
        # only as the socket takes them (the full copy of 100,000 staples for a new worker).
        self._items: collections.deque[tuple[bytes, int | None] | Iterator[bytes]] = collections.deque()
        self._writing = False
        self._closed = False

    def put(self, message: bytes, fd: int | None = None) -> None:
        if self._closed:
            if fd is not None:
                os.close(fd)  # nobody to hand it to any more
            return
        self._items.append((message, fd))
        self.flush()

    def put_lazily(self, messages: Iterator[bytes]) -> None:
        if self._closed:
            return
        self._items.append(messages)
        self.flush()

    def flush(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        while self._items:
            head = self._items[0]
            if not isinstance(head, tuple):
                nxt = next(head, None)
                if nxt is None:
                    self._items.popleft()
                    continue
                head = (nxt, None)
                self._items.appendleft(head)  # sent next, before the rest of the iterator
            message, fd = head
            try:
                if fd is None:
                    self.sock.send(message)
                else:
                    socket.send_fds(self.sock, [message], [fd])
            except BlockingIOError:
                if not self._writing:
                    loop.add_writer(self.sock.fileno(), self.flush)
                    self._writing = True
                return
            except OSError:
                self.on_error()
                return
            self._items.popleft()
            if fd is not None:
                os.close(fd)
        if self._writing:
            loop.remove_writer(self.sock.fileno())
            self._writing = False

    def close(self) -> None:
        """Stop sending; close the descriptors still waiting. The socket is the caller's to close."""
        if self._closed:
            return
        self._closed = True
        if self._writing:
            asyncio.get_running_loop().remove_writer(self.sock.fileno())
            self._writing = False
        for item in self._items:
            if isinstance(item, tuple) and item[1] is not None:
                os.close(item[1])
        self._items.clear()
