"""A CA responder that answers with fixed DER files: what ``openssl ocsp`` cannot make (a backdated
thisUpdate, a thisUpdate ahead, a SHA-1 CertID for any request, a broken signature).

    python -m tests.e2e.fixed_responder PORT DIRECTORY

A POST to ``/NAME`` is answered with ``DIRECTORY/NAME.der``, read again for every request (a test
swaps the file to change the answer), or HTTP 404.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main(argv: list[str]) -> int:
    port, directory = int(argv[0]), Path(argv[1])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            name = self.path.strip("/").split("?")[0]
            path = directory / f"{name}.der"
            if not name.isidentifier() or not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            sys.stdout.write(f"{self.path} {format % args}\n")
            sys.stdout.flush()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"answering from {directory} on port {port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
