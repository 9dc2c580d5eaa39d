"""Field types the request models share, each as strict in the OpenAPI spec as the server is."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AwareDatetime, BeforeValidator, Field

# An ISO 4217 code: its shape here; whether this deployment supports it is the service's (1004).
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["USD"])]

# What Money.parse reads: no sign, no exponent, no leading zeros, at most 15 digits before the
# point and 4 after it (the most minor digits of any ISO 4217 currency; the currency's own
# number is the service's rule, 1000).
Amount = Annotated[
    str, Field(pattern=r"^(0|[1-9][0-9]{0,14})(\.[0-9]{1,4})?$", examples=["100.50"])
]

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339_text(value: object) -> object:
    """Only RFC 3339 text, as the spec's `date-time` says: pydantic alone would also read a
    number of seconds since the epoch ("0.5") as a time."""
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time like 2025-01-31T12:00:00Z")
    return value


# A point in time with its offset, written as RFC 3339.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]
