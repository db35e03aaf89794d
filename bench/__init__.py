"""Benchmarks for ocspproxy against real peers (nginx, Apache httpd + mod_ssl): see docs/performance.md."""
