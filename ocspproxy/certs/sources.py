"""Which certificate files to keep stapled, as the configuration names them (--cert, Apache's
configuration), and the inventory built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import structlog

from ocspproxy.apache.config import ApacheConfig, ApacheConfigError, read_apache_config
from ocspproxy.certs.build import build_steps
from ocspproxy.certs.index import CertIndex, read_index, write_index
from ocspproxy.certs.inventory import CertSource, Inventory
from ocspproxy.config import Config, ConfigError
from ocspproxy.steps import Steps, run_steps

__all__ = ["Sources", "certificate_sources", "inventory_steps", "read_inventory", "report"]

log = structlog.get_logger("ocspproxy")


class Sources(NamedTuple):
    """Where the certificates to keep stapled come from, as the configuration names them."""

    certs: list[CertSource]
    apache_files: tuple[Path, ...]  # Apache's configuration files read
    # The fields of a warning when the configuration names no certificate: what was read and why
    # nothing was found. None when it names some.
    unstapled: dict[str, Any] | None


def certificate_sources(config: Config) -> Sources:
    """The certificate files to keep stapled, from --cert and Apache's config, and the Apache files
    read. Raises ConfigError when Apache's configuration cannot be read at all."""
    sources = [CertSource(path=p) for p in config.certs]
    if config.apache_config is None:
        return Sources(sources, (), _unstapled(config, None))
    try:
        apache = read_apache_config(config.apache_config)
    except (ApacheConfigError, OSError) as exc:
        raise ConfigError("apache_config", str(exc)) from exc
    seen: set[Path] = set()
    for site in apache.sites:
        if site.certificate_file in seen:
            continue  # several vhosts may share one certificate
        seen.add(site.certificate_file)
        sources.append(
            CertSource(
                path=str(site.certificate_file),
                chain_file=site.chain_file,
                ca_file=site.ca_certificate_file,
                ca_path=site.ca_certificate_path,
                named_by="SSLCertificateFile",
            )
        )
    return Sources(sources, apache.files_read, _unstapled(config, apache))


def _unstapled(config: Config, apache: ApacheConfig | None) -> dict[str, Any] | None:
    """The warning when nothing names a certificate (a service with nothing to do says why), or
    when Apache's configuration, given, names none: then with the directives that look misspelt."""
    if apache is None:
        if config.certs:
            return None
        return {
            "event": "no certificates to keep stapled",
            "reason": "no --cert or certs, no --apache-config or apache_config given",
        }
    if apache.sites:
        return None
    event = (
        "no certificates from Apache's configuration" if config.certs else "no certificates to keep stapled"
    )
    fields: dict[str, Any] = {"event": event, "reason": apache.no_sites()}
    if apache.misspellings:
        fields["misspelt"] = [str(m) for m in apache.misspellings]
    return fields


def read_inventory(config: Config) -> tuple[Inventory, Sources]:
    """Certificates from --cert and from Apache's config. Returns the inventory and where they came
    from (the Apache files read among it).

    Unchanged certificate files are known from the index kept in the state directory (only stat-ed),
    which is updated afterwards; an index that cannot be read or written costs only speed.
    Raises ConfigError when Apache's configuration cannot be read at all.
    """
    sources = certificate_sources(config)
    index = read_index(config.state_dir)
    inventory = run_steps(inventory_steps(config, sources.certs, index))
    write_index(config.state_dir, index)
    return inventory, sources


def inventory_steps(config: Config, sources: list[CertSource], index: CertIndex) -> Steps[Inventory]:
    """The full build of the inventory of these sources, a step at a time."""
    return build_steps(sources, config.issuers, dict(config.issuer_urls), index=index)


def report(sources: Sources, inventory: Inventory) -> None:
    """What the inventory in force holds and lacks, logged at start-up and on each reload (a watch
    pass reloads only when a file changed)."""
    if sources.unstapled is not None:
        log.warning(**sources.unstapled)
    for problem in inventory.problems:
        log.warning("inventory", problem=problem)
    log.info(
        "inventory loaded",
        certificates=len(inventory.targets),
        issuers=len({id(i) for i in inventory.issuers.values()}),
        problems=len(inventory.problems),
    )
