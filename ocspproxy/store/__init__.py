"""Persistent staple storage: the ``Store`` protocol and its backends."""

from ocspproxy.store.base import SnapshotStore, Stamp, Store, StoreError
from ocspproxy.store.files import FileStore

__all__ = ["FileStore", "SnapshotStore", "Stamp", "Store", "StoreError"]
