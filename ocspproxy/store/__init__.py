"""Persistent staple storage: the ``Store`` contract and its backends."""

from ocspproxy.store.base import Store, Stored, StoreError
from ocspproxy.store.files import FileStore

__all__ = ["FileStore", "Store", "StoreError", "Stored"]
