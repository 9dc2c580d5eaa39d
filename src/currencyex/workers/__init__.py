"""Event consumers: each a small function subscribed to one subject under a durable name."""
