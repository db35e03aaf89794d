"""Fuzz targets (atheris) and the invariants they share with ``tests/test_properties.py``."""
