"""Credentials: JWT signing keys and tokens, password hashing."""
