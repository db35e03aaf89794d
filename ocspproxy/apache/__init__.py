"""``ocspproxy apache``: read Apache's configuration, scan its TLS sites, install the stapling snippet."""
