"""Which certificates to keep stapled, their issuers and CA responders, and when their files change."""
