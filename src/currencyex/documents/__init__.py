"""The documents service: KYC document uploads, signed links, the compliance queue."""
