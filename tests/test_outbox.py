"""The channel outbox: order kept across a full socket, descriptors passed and closed, close()."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator

import pytest

from ocspproxy.workers.outbox import Outbox

Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Our end (non-blocking, for the outbox) and theirs of a SOCK_SEQPACKET pair; closed after."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    yield ours, theirs
    ours.close()
    theirs.close()


async def _drain(sock: socket.socket, n: int) -> list[tuple[bytes, list[int]]]:
    got: list[tuple[bytes, list[int]]] = []
    while len(got) < n:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 64 * 1024, 1)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        got.append((message, fds))
        if len(got) % 50 == 0:
            await asyncio.sleep(0)  # let the sender run: the socket fills and drains many times
    return got


def _writers_closed(r: int) -> bool:
    """Every write end of the pipe read by r is closed (descriptor numbers get reused: ask the pipe)."""
    os.set_blocking(r, False)
    try:
        return os.read(r, 1) == b""
    except BlockingIOError:
        return False


async def test_messages_arrive_in_order_through_a_full_socket(pair: Pair) -> None:
    ours, theirs = pair
    theirs.setblocking(False)
    errors: list[bool] = []
    outbox = Outbox(ours, on_error=lambda: errors.append(True))
    outbox.put(b"first")
    outbox.put_lazily(i.to_bytes(4, "big") + b"x" * 40_000 for i in range(300))  # ~12 MB
    r, w = os.pipe()
    outbox.put(b"with a descriptor", w)
    outbox.put(b"last")
    got = await _drain(theirs, 303)
    assert got[0] == (b"first", [])
    assert [int.from_bytes(m[:4], "big") for m, _ in got[1:301]] == list(range(300))
    message, fds = got[301]
    assert message == b"with a descriptor" and len(fds) == 1
    os.write(fds[0], b"!")
    assert os.read(r, 1) == b"!"
    assert got[302] == (b"last", [])
    os.close(fds[0])
    assert _writers_closed(r)  # the sender's copy was closed once sent
    assert not errors
    os.close(r)


async def test_close_drops_waiting_messages_and_their_descriptors(pair: Pair) -> None:
    ours, _ = pair
    outbox = Outbox(ours, on_error=lambda: None)
    while True:  # fill the socket so that what follows has to wait
        try:
            ours.send(b"y" * 40_000)
        except BlockingIOError:
            break
    r, w = os.pipe()
    outbox.put(b"waiting", w)
    outbox.close()
    r2, w2 = os.pipe()
    outbox.put(b"after close", w2)
    assert _writers_closed(r) and _writers_closed(r2)
    os.close(r)
    os.close(r2)


async def test_a_send_error_is_reported(pair: Pair) -> None:
    ours, theirs = pair
    theirs.close()
    errors: list[bool] = []
    Outbox(ours, on_error=lambda: errors.append(True)).put(b"to nobody")
    assert errors == [True]
