"""How hard the property tests search: ``DOCSTORE_FUZZ_SCALE`` multiplies every test's
``max_examples`` (default 1; ``DOCSTORE_FUZZ_SCALE=20 pytest tests/reliability/test_fuzz_urls.py``
searches twenty times as long). CI runs the default; raise it before trusting a new oracle."""

from __future__ import annotations

import math
import os


def examples(count: int) -> int:
    """``count`` times ``DOCSTORE_FUZZ_SCALE`` (a positive number), at least 1."""
    raw = os.environ.get("DOCSTORE_FUZZ_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"DOCSTORE_FUZZ_SCALE must be a positive number, not {raw!r}") from None
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"DOCSTORE_FUZZ_SCALE must be a positive number, not {raw!r}")
    return max(1, round(count * scale))
