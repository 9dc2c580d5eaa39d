"""The remittance service: sending money abroad, paying it out through a partner, receipts."""
