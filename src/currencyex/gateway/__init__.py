"""The edge: request context, error mapping, the Casbin guard, rate limits and operations routes."""
