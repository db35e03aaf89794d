"""Staples in memory and the one write path into it: door, listeners, fetching, start-up, scheduling."""
