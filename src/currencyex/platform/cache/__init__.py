"""The cache and the rate-limit store: in memory, or Redis (a single server or a Cluster)."""
