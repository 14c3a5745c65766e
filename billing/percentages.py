"""A share as a percentage: the one rounding for budgets used, spend bars and margins."""

from __future__ import annotations

from decimal import Decimal

# The operators' screens (admin, cockpit) show one decimal; the tenant API's `percent_used`
# keeps two, the places its serializer declares.
SCREEN_PLACES = 1
API_PLACES = 2


def percent_of(
    part: Decimal, whole: Decimal | None, *, places: int = SCREEN_PLACES
) -> Decimal | None:
    """part * 100 / whole, rounded half-even to `places`; None without a positive whole."""
    if whole is None or whole <= 0:
        return None
    return (part * 100 / whole).quantize(Decimal(1).scaleb(-places))
