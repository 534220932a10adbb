"""How the shell prints values: as the Go ``dqlite`` shell does (Go's ``%v``)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["format_value", "json_value"]


def _go_float(value: float) -> str:
    """Format a float the way Go's ``%v`` does: shortest digits, %e past 1e6 or below 1e-4."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    # repr() gives the shortest digits that round-trip, as Go's strconv does.
    digits = repr(abs(value))
    if "e" in digits:
        significand, _, exp_text = digits.partition("e")
        exp = int(exp_text)  # repr puts exactly one digit before the point here
        sig = significand.replace(".", "").rstrip("0") or "0"
    else:
        whole, _, frac = digits.partition(".")
        if whole != "0":
            exp = len(whole) - 1
            sig = (whole + frac).rstrip("0")
        else:
            stripped = frac.lstrip("0")
            exp = -(len(frac) - len(stripped)) - 1
            sig = stripped.rstrip("0")
    if exp < -4 or exp >= 6:
        body = sig[0] + ("." + sig[1:] if len(sig) > 1 else "")
        return f"{sign}{body}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    point = exp + 1
    if point <= 0:
        return f"{sign}0.{'0' * -point}{sig}"
    if point >= len(sig):
        return f"{sign}{sig}{'0' * (point - len(sig))}"
    return f"{sign}{sig[:point]}.{sig[point:]}"


def format_value(value: Any) -> str:
    """Render one result value as the Go shell prints it."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "[" + " ".join(str(b) for b in bytes(value)) + "]"
    return str(value)


def json_value(value: Any) -> Any:
    """A value as ``-f json`` prints it: blobs as arrays of byte values."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return list(bytes(value))
    return value
