"""The wallet service: customers' currency wallets on a double-entry ledger."""
