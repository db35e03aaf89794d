"""The admin listener and its commands: Prometheus metrics, health checks, the status of every
configured certificate as JSON and as a page (``server.py``, ``metrics.py``, ``status.py``,
``page.py``), and ``ocspproxy status`` / ``ocspproxy refresh`` (``commands.py``). It reads the
catalog, the cache and the scheduler, and listens to the door's events; the OCSP path does not know
it exists (docs/architecture.md)."""
