"""The checks of configuration values, each raising ConfigError naming the key (``config.py`` holds
the schema that uses them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ocspproxy.upstream.proxy import ProxyError, check_proxy_url

__all__ = ["ConfigError", "boolean", "choice", "number", "proxy", "string", "strings"]


class ConfigError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def number(minimum: float, maximum: float, *, integer: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        numeric = isinstance(value, int) or (not integer and isinstance(value, float))
        if isinstance(value, bool) or not numeric:
            raise ConfigError(key, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
        if not minimum <= value <= maximum:
            raise ConfigError(key, f"must be between {minimum} and {maximum}, got {value}")
        return value if integer else float(value)

    return check


def choice(*options: str) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value not in options:
            raise ConfigError(key, f"expected one of {', '.join(options)}, got {value!r}")
        return value

    return check


def string(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a non-empty string, got {value!r}")
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def proxy(key: str, value: Any) -> str:
    try:
        return check_proxy_url(string(key, value))
    except ProxyError as exc:
        raise ConfigError(key, str(exc)) from None


def strings(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, "expected a list of paths")
    return tuple(value)
