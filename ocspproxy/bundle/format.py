"""The files carried across an air gap: a want file (what the inside needs) and a bundle (what the
outside fetched). Both are plain tar archives that standard tools read::

    manifest.json          {"format": "ocspproxy-want" | "ocspproxy-bundle", "version": 1,
                            "created": ISO 8601, "created_by": ..., "entries": [...]}
    issuers/<sha1 key hash>.pem   want: each issuer certificate (PEM)
    requests/<CertID>.der         want: the OCSP request for each certificate (openssl ocsp -reqin)
    responses/<CertID>.der        bundle: each OCSP response, as the CA signed it (openssl ocsp -respin)

``<CertID>`` is ``<hash>-<issuer key hash>-<serial>`` (hex), as the state directory names staples.
Each manifest entry names its CertID (hash, issuer name hash, issuer key hash, serial) and its file;
a bundle's entries also carry the status, thisUpdate, nextUpdate, producedAt and SHA-256 of the DER —
for people and tools: the importer trusts none of it and validates every response itself.

Reading never extracts anything: the archive is walked once, in order (the manifest first, as it is
written), only regular files with the names above are read, each within a size cap, so a truncated
or hostile archive costs at most a report per entry. A newer version than ``VERSION`` is refused
with a message saying so; every older one stays readable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ocspproxy import __version__
from ocspproxy.core.ocsp import HASH_ALGORITHMS, CertKey
from ocspproxy.core.staple import Staple
from ocspproxy.store.atomic import TMP_PREFIX, sync_directory

__all__ = [
    "BUNDLE",
    "VERSION",
    "WANT",
    "Archive",
    "BundleError",
    "Member",
    "bundle_entry",
    "cert_id_fields",
    "key_from_fields",
    "key_of_member",
    "open_archive",
    "response_name",
    "write_archive",
]

VERSION = 1  # what this ocspproxy writes, and the newest it reads
WANT = "ocspproxy-want"
BUNDLE = "ocspproxy-bundle"
_KINDS = {WANT: "a want file", BUNDLE: "a bundle"}
MANIFEST = "manifest.json"
_MAX_MANIFEST = 512 << 20  # 100,000 entries take about 40 MB
_MAX_MEMBER = 1 << 20  # an OCSP response, a request, a certificate
_MEMBER = re.compile(
    r"^(issuers/[0-9a-f]{40}\.pem|(requests|responses)/(sha1|sha256|sha384|sha512)-[0-9a-f]{40,128}-[0-9a-f]{1,160}\.der)$"
)


class BundleError(Exception):
    """The file cannot be used at all (not an archive, no manifest, an unknown version); str() says
    why in one line."""


def cert_id_fields(key: CertKey, name_hash: bytes) -> dict[str, str]:
    return {
        "hash": key.alg,
        "issuer_name_hash": name_hash.hex(),
        "issuer_key_hash": key.issuer_key_hash.hex(),
        "serial": f"{key.serial:x}",
    }


def bundle_entry(staple: Staple, name_hash: bytes, *, subject: str, source: str | None) -> dict[str, Any]:
    """A bundle's manifest entry for a validated staple (its file: ``responses/<CertID>.der``)."""
    return {
        "cert_id": cert_id_fields(staple.key, name_hash),
        "subject": subject,
        "status": str(staple.status),
        "this_update": staple.this_update.isoformat(),
        "next_update": staple.next_update.isoformat(),
        "produced_at": staple.produced_at.isoformat(),
        "sha256": hashlib.sha256(staple.der).hexdigest(),
        "source": source,
        "response": response_name(staple.key),
    }


def response_name(key: CertKey) -> str:
    return f"responses/{key}.der"


def key_from_fields(fields: Any) -> tuple[CertKey, bytes]:
    """(CertKey, issuer name hash) of a manifest entry's ``cert_id``. Raises ValueError."""
    if not isinstance(fields, dict):
        raise ValueError("no cert_id")
    alg = fields.get("hash")
    if alg not in HASH_ALGORITHMS:
        raise ValueError(f"cert_id hash {alg!r} not supported")
    try:
        key_hash = bytes.fromhex(str(fields["issuer_key_hash"]))
        name_hash = bytes.fromhex(str(fields["issuer_name_hash"]))
        serial = int(str(fields["serial"]), 16)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"cert_id unreadable: {exc}") from None
    size = HASH_ALGORITHMS[alg]().digest_size
    if len(key_hash) != size or len(name_hash) != size or serial < 0:
        raise ValueError("cert_id hash lengths do not match its algorithm")
    return CertKey(alg=alg, issuer_key_hash=key_hash, serial=serial), name_hash


@dataclass(frozen=True, slots=True)
class Member:
    """A file of the archive as read: its bytes, or why there are none."""

    name: str
    data: bytes | None
    problem: str | None = None


@dataclass
class Archive:
    """An archive opened for reading: its manifest, then its members one at a time (``members``)."""

    path: Path
    kind: str
    version: int
    created: datetime | None
    entries: list[dict[str, Any]]
    _tar: tarfile.TarFile = field(repr=False)
    _file: io.BufferedReader = field(repr=False)

    def members(self) -> Iterator[Member]:
        """Every file with a known name, in archive order. A truncated or damaged archive ends
        with a Member naming the problem; what was read whole before it stands."""
        tar = self._tar
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                yield Member("", None, f"archive damaged or truncated here: {exc}")
                return
            if info is None:
                if not self._ended_whole():
                    yield Member("", None, "archive truncated: it ends without tar's end-of-archive blocks")
                return
            vars(tar)["members"].clear()  # 100,000 TarInfos are not kept
            if not _MEMBER.match(info.name):
                continue
            if not info.isreg():
                yield Member(info.name, None, "not a regular file in the archive")
            elif info.size > _MAX_MEMBER:
                yield Member(info.name, None, f"larger than {_MAX_MEMBER} bytes")
            else:
                try:
                    handle = tar.extractfile(info)
                    data = handle.read() if handle is not None else b""
                except (tarfile.TarError, EOFError, OSError) as exc:
                    yield Member(info.name, None, f"archive truncated inside it: {exc}")
                    return
                if len(data) != info.size:
                    yield Member(info.name, None, "archive truncated inside it")
                    return
                yield Member(info.name, data)

    def _ended_whole(self) -> bool:
        """A plain tar ends with two zero blocks after its last member (a cut at a member's
        boundary leaves none); a compressed one is checked by its own trailer."""
        self._file.seek(0)
        if self._file.read(2) == b"\x1f\x8b":
            return True
        return os.fstat(self._file.fileno()).st_size >= self._tar.offset + 2 * tarfile.BLOCKSIZE

    def close(self) -> None:
        self._tar.close()
        self._file.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_archive(path: Path, kind: str, *, entries: bool = True) -> Archive:
    """Open a want file or a bundle and read its manifest. Raises BundleError. With entries false
    only the manifest's head (format, version, created) is parsed when it can be: parsing 100,000
    entries holds the GIL for a second, which a service answering requests cannot afford."""
    try:
        file = open(path, "rb")  # noqa: SIM115 (kept open by the Archive)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        tar = tarfile.open(fileobj=file, mode="r|*")  # noqa: SIM115 (kept open by the Archive)
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isreg():
            raise BundleError(f"{path}: no {MANIFEST} at the start; not {_KINDS[kind]} of ocspproxy")
        if first.size > _MAX_MANIFEST:
            raise BundleError(f"{path}: {MANIFEST} larger than {_MAX_MANIFEST} bytes")
        handle = tar.extractfile(first)
        manifest = _parse(handle.read() if handle is not None else b"", entries=entries)
    except BundleError:
        file.close()
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        file.close()
        raise BundleError(f"{path}: not a readable tar archive ({exc})") from exc
    except ValueError as exc:
        file.close()
        raise BundleError(f"{path}: {MANIFEST} is not JSON ({exc})") from exc
    try:
        version, created, listed = _check_manifest(manifest, path, kind)
    except BundleError:
        file.close()
        raise
    return Archive(path, kind, version, created, listed, tar, file)


def _parse(raw: bytes, *, entries: bool) -> Any:
    """The manifest; without its entries when asked and it is written as ``write_archive`` does
    (entries last), else whole. Raises ValueError."""
    cut = -1 if entries else raw.find(b'"entries"')
    if cut > 0:
        try:
            head = json.loads(raw[:cut].rstrip().rstrip(b",") + b"}")
        except ValueError:
            head = None
        if isinstance(head, dict) and "entries" not in head:
            return {**head, "entries": []}
    return json.loads(raw)


def key_of_member(name: str) -> CertKey | None:
    """The CertKey a ``responses/<CertID>.der`` or ``requests/<CertID>.der`` name spells."""
    match = _MEMBER.match(name)
    if match is None or match.group(2) is None:
        return None
    alg, key_hash, serial = name.rsplit("/", 1)[1].removesuffix(".der").split("-")
    if len(key_hash) != 2 * HASH_ALGORITHMS[alg]().digest_size:
        return None
    return CertKey(alg=alg, issuer_key_hash=bytes.fromhex(key_hash), serial=int(serial, 16))


def _check_manifest(
    manifest: Any, path: Path, kind: str
) -> tuple[int, datetime | None, list[dict[str, Any]]]:
    if not isinstance(manifest, dict) or manifest.get("format") not in _KINDS:
        raise BundleError(f"{path}: not {_KINDS[kind]} of ocspproxy (no known format in {MANIFEST})")
    if manifest["format"] != kind:
        raise BundleError(f"{path} is {_KINDS[manifest['format']]}, not {_KINDS[kind]}")
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: format version {version!r} is not a version")
    if version > VERSION:
        raise BundleError(
            f"{path}: format version {version} is newer than this ocspproxy reads (up to {VERSION}); "
            f"upgrade ocspproxy ({__version__}) on this side to use it"
        )
    entries = manifest.get("entries")
    if not isinstance(entries, list):
        raise BundleError(f"{path}: {MANIFEST} has no list of entries")
    try:
        created: datetime | None = datetime.fromisoformat(str(manifest.get("created")))
    except ValueError:
        created = None
    return version, created, [e if isinstance(e, dict) else {} for e in entries]


def write_archive(
    path: Path,
    kind: str,
    created: datetime,
    entries: list[dict[str, Any]],
    files: Mapping[str, bytes],
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write the archive at path whole or not at all (temporary file, fsync, rename, fsync of the
    directory); readable by all unless mode says otherwise (it holds public data only); owned by
    owner (uid, gid) when given. Raises OSError."""
    manifest = {
        "format": kind,
        "version": VERSION,
        "created": created.astimezone(UTC).isoformat(timespec="seconds"),
        "created_by": f"ocspproxy {__version__}",
        "entries": entries,
    }
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")  # a leftover is known as one
    mtime = int(created.timestamp())
    try:
        with open(tmp, "wb") as out:
            with tarfile.open(fileobj=out, mode="w:gz" if path.suffix in (".gz", ".tgz") else "w") as tar:
                _add(tar, MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n", mtime)
                for name, data in files.items():
                    _add(tar, name, data, mtime)
            out.flush()
            os.fchmod(out.fileno(), mode)
            if owner is not None:
                os.fchown(out.fileno(), *owner)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
