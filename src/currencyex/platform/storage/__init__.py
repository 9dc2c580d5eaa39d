"""Object storage: a local folder or S3 (any S3-compatible server)."""
