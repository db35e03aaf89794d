"""The OCSP port: the fast path for hits, the aiohttp edge for the rest, answers and their log line."""
