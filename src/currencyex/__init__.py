"""CurrencyEx: an open backend for currency exchange and remittance."""

__version__ = "0.1.0"
