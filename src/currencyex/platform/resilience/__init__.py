"""Staying up when a dependency is not: the circuit breaker, and what counts as an outage."""
