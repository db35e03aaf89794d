"""Pure OCSP: wire format, DER, signatures, validation, the Staple value, the policies. No I/O."""
