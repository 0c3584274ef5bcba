"""Why a GB/s figure sits above the roofline: every such figure is flagged with the reason found.

The roofline is the best of the streaming kernels measured on the same machine, device and shape
(bytes_moved.ROOFLINE_OPS), so a figure above it means the byte model or the measurement does not hold for
that case; llm.c's 3,530 GB/s on an 864 GB/s card is the cautionary tale. Reasons, the first that applies:
  cache-resident  the bytes moved fit in the device's last-level cache, so they need not reach memory
  one-sample      one timed call (asv --quick): no warm-up and no spread, not a measurement
  within-spread   at the samples' 75th percentile time the figure is at or below the roofline: noise
  unexplained     none of these: check the byte model (it may count less than the kernel moves) and the roofline
The flag names the byte model used, so that a reader can check the count.
"""
from __future__ import annotations

from .bytes_moved import BYTE_MODELS

CACHE_RESIDENT, ONE_SAMPLE, WITHIN_SPREAD, UNEXPLAINED = "cache-resident", "one-sample", "within-spread", "unexplained"
PREFIX = "over-roofline"  # every flag starts with it: a column filter finds them all


def over_roofline_flag(op: str, bytes_moved: int | None, gbps: float | None, roofline_gbps: float | None,
                       samples: int | None, time_q75_s: float | None, cache_bytes: int | None) -> str | None:
    """None for a figure at or below the roofline (or without one); else "over-roofline REASON: detail; byte
    model ...". cache_bytes: the last-level cache of the device (None when it was not recorded)."""
    if gbps is None or not roofline_gbps or gbps <= roofline_gbps:
        return None
    if cache_bytes and bytes_moved and bytes_moved <= cache_bytes:
        reason = f"{CACHE_RESIDENT}: {_mb(bytes_moved)} moved fit the {_mb(cache_bytes)} last-level cache"
    elif samples == 1:
        reason = f"{ONE_SAMPLE}: one timed call (--quick), not a measurement"
    elif time_q75_s and bytes_moved and bytes_moved / time_q75_s / 1e9 <= roofline_gbps:
        reason = f"{WITHIN_SPREAD}: at the samples' 75th percentile time it is at or below the roofline"
    else:
        reason = (f"{UNEXPLAINED}: not cache-resident ({_mb(bytes_moved)} moved, cache "
                  f"{_mb(cache_bytes) if cache_bytes else 'not recorded'}); check the byte model and the roofline")
    return f"{PREFIX} {reason}; byte model {op}: {BYTE_MODELS.get(op, 'none')} x itemsize"


def _mb(n: int | None) -> str:
    return "? MB" if n is None else f"{n / 1e6:.1f} MB"
