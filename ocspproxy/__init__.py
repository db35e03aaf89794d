"""ocspproxy: a local OCSP responder and staple cache for Apache httpd."""

__version__ = "0.1.0"
