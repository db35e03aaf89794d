"""Real peers for the end-to-end tests: test PKI, ``openssl ocsp``, Apache httpd, ``s_client``, ocspproxy.

Everything here runs real processes on loopback ports inside a temporary directory.  Each process
wrapper has ``start()``, ``stop()``, ``restart()`` (same port, same files) and ``cleanup()`` (stop and
forget); fixtures in ``conftest.py`` call ``cleanup()`` in their finalizers.  Every wait is bounded.

The code lives in ``tools``, ``pki``, ``processes``, ``httpd`` and ``clients``; this module re-exports it.
"""

from __future__ import annotations

from .clients import (
    HandshakeError,
    HttpOcspAnswer,
    Observation,
    OcspText,
    describe,
    observe,
    ocsp_request_der,
    parse_ocsp_text,
    parse_openssl_time,
    poll_staple,
    query_ocsp,
    read_der_with_openssl,
    s_client,
)
from .httpd import Apache, ApacheTree, DebianTree, VHost
from .pki import Leaf, Pki, build_pki, index_line, openssl_serial_hex, sign_good
from .processes import ManagedProcess, OcspProxy, OcspResponder, run_ocspproxy
from .tools import (
    APACHE_MODULES_DIR,
    APACHE_REQUIRED_MODULES,
    REPO_ROOT,
    UTC,
    find_apache,
    find_openssl,
    free_port,
    missing_tools,
    port_accepts,
    port_free,
    tail,
    utcnow,
    wait_until,
)

__all__ = [
    "APACHE_MODULES_DIR",
    "APACHE_REQUIRED_MODULES",
    "REPO_ROOT",
    "UTC",
    "Apache",
    "ApacheTree",
    "DebianTree",
    "HandshakeError",
    "HttpOcspAnswer",
    "Leaf",
    "ManagedProcess",
    "Observation",
    "OcspProxy",
    "OcspResponder",
    "OcspText",
    "Pki",
    "VHost",
    "build_pki",
    "describe",
    "find_apache",
    "find_openssl",
    "free_port",
    "index_line",
    "missing_tools",
    "observe",
    "ocsp_request_der",
    "openssl_serial_hex",
    "parse_ocsp_text",
    "parse_openssl_time",
    "poll_staple",
    "port_accepts",
    "port_free",
    "query_ocsp",
    "read_der_with_openssl",
    "run_ocspproxy",
    "s_client",
    "sign_good",
    "tail",
    "utcnow",
    "wait_until",
]
