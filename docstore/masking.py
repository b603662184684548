"""Secrets masked in text: the one mechanism behind every redaction docstore shows.

:func:`mask_secrets` finds every occurrence of every secret in the text as given before it
hides any, so masking one secret cannot break another's form (``user:pw`` masked first used to
leave ``pw``'s other occurrences half visible). Error descriptions
(:func:`docstore.transient.scrub`), redacted URLs (:func:`docstore.urls.redact_url`) and the
CLI's messages all use it. No docstore imports: every layer may use it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

REDACTED = "***"
"""What a hidden secret is shown as."""

MIN_SCRUBBED_SECRET = 4
"""Shorter secrets are not searched for in text: replacing every ``e`` would garble the
message and spell the password out (URLs are redacted by their structure instead)."""

_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")  # one run: a UTF-8 character may span several


def mask_secrets(text: str, secrets: Iterable[str], *, whole_escapes: bool = False) -> str:
    """``text`` with every occurrence of every secret (overlapping ones too) replaced by
    ``***``, all found in the original text first, so masking one cannot break another's.
    ``whole_escapes`` (a part of a URL as written): the mask widens to whole runs of ``%XX``
    escapes so it still decodes (``%40000`` less ``0000``: ``***``, not ``%4***``;
    ``%EF%BC%A0%3A`` less ``0%3A``: ``***``, not the half character ``%EF%BC``)."""
    found = [s for s in dict.fromkeys(secrets) if s and s in text]
    if not found:
        return text
    hidden = [False] * len(text)
    for secret in found:
        for match in re.finditer(f"(?={re.escape(secret)})", text):
            hidden[match.start() : match.start() + len(secret)] = [True] * len(secret)
    for run in _ESCAPES.finditer(text) if whole_escapes else ():
        if any(hidden[run.start() : run.end()]):
            hidden[run.start() : run.end()] = [True] * (run.end() - run.start())
    runs = itertools.groupby(zip(text, hidden, strict=True), key=lambda pair: pair[1])
    return "".join(REDACTED if mask else "".join(c for c, _ in run) for mask, run in runs)


def scrub_secrets(text: str, secrets: Iterable[str]) -> str:
    """:func:`mask_secrets` for those ``secrets`` of :data:`MIN_SCRUBBED_SECRET` characters or
    more: what free text (an error message, a CLI usage error) is scrubbed with."""
    return mask_secrets(text, (s for s in secrets if len(s) >= MIN_SCRUBBED_SECRET))
