"""Persistent staple storage: the ``Store`` protocol and its backends."""

from ocspproxy.store.base import Store, StoreError
from ocspproxy.store.files import FileStore

__all__ = ["FileStore", "Store", "StoreError"]
