"""The fleet's shared store (Redis): settings, the names and scripts kept there, and the ``Fleet``
that plugs into the core's seams (a Lease, a Listener, a bulk load through the door). Redis is
shared knowledge, never trusted and never the only copy: see docs/architecture.md, "Fleets"."""
