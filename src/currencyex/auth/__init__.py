"""The auth service: users, passwords, tokens, staff management and KYC status."""
