"""A TCP relay in front of a CA responder, for the fleet's end-to-end tests: prints a line per
connection that carries a request, and holds the first ``--hold-first`` of them ``--hold`` seconds
before passing them on (a CA that is slow to answer).

    python relay.py --listen PORT --to PORT [--hold-first N --hold SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--to", type=int, required=True)
    parser.add_argument("--hold-first", type=int, default=0)
    parser.add_argument("--hold", type=float, default=0.0)
    args = parser.parse_args()
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        first = await reader.read(65536)
        if not first:  # a readiness probe: not a request
            writer.close()
            return
        count += 1
        number = count
        print(f"request {number}", flush=True)
        if number <= args.hold_first:
            await asyncio.sleep(args.hold)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", args.to)
        except OSError:
            writer.close()
            return
        up_writer.write(first)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen)
    print("relay ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
