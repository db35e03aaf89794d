"""Real Redis for the fleet's tests: ``redis-server`` (and ``redis-sentinel``) from Debian's packages,
started by the tests on loopback in a temporary directory, each run with nothing saved to disk
unless asked. Missing binaries skip the test, or fail it under ``CI=true`` (``scripts/test``
installs them)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import redis as redis_py

from tests.e2e.processes import ManagedProcess
from tests.e2e.tools import free_port
from tests.required import unavailable

__all__ = ["RedisSentinel", "RedisServer", "fill_to_maxmemory", "redis_binary", "server_flags"]


def server_flags(port: int, directory: Path) -> list[str]:
    """redis-server's flags for a throw-away server on loopback: nothing saved to disk."""
    return [
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]


def redis_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        unavailable(f"{name} is not installed (apt-get install redis-server redis-sentinel)")
    return path


class RedisServer(ManagedProcess):
    def __init__(self, directory: Path, *, replica_of: int | None = None, extra: Sequence[str] = ()) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__("redis-server", free_port(), directory / "redis.log")
        self.directory = directory
        self.replica_of = replica_of
        self.extra = list(extra)
        self.binary = redis_binary("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    def command(self) -> list[str]:
        cmd = [self.binary, *server_flags(self.port, self.directory)]
        cmd += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        if self.replica_of is not None:
            cmd += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return cmd + self.extra

    def cli(self, *args: str, raw: bool = False) -> str:
        """redis-cli against this server; its output."""
        cmd = (
            [redis_binary("redis-cli"), "-p", str(self.port)] + (["--no-raw"] if not raw else []) + list(args)
        )
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout.strip()


class RedisSentinel(ManagedProcess):
    def __init__(self, directory: Path, *, master: int, service: str = "ocspproxy-test") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__("redis-sentinel", free_port(), directory / "sentinel.log")
        self.directory = directory
        self.master = master
        self.service = service
        self.binary = redis_binary("redis-sentinel")

    def command(self) -> list[str]:
        conf = self.directory / "sentinel.conf"
        if not conf.exists():  # the sentinel rewrites its own file: written once
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master} 1\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
            )
        return [self.binary, str(conf)]

    def cli(self, *args: str) -> str:
        cmd = [redis_binary("redis-cli"), "-p", str(self.port), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout.strip()


def fill_to_maxmemory(client: redis_py.Redis, headroom: int) -> bool:
    """Make client's Redis full as an operator's would be (``noeviction``, ``maxmemory`` headroom
    bytes above what it holds, then 1 KiB keys ``filler:N`` until a write is refused) and keep it
    full. True when a write was refused for memory."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used + headroom)
    refused = False
    try:
        for i in range(10_000):
            client.set(f"filler:{i}", b"x" * 1024)
    except redis_py.exceptions.OutOfMemoryError:
        refused = True
    # Kept full: memory accounting wavers by a few bytes around the limit.
    client.config_set("maxmemory", int(client.info("memory")["used_memory"]) // 2)
    return refused
