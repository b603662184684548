"""Known secrets masked in text, all at once: every search for a password in a message, a URL's
parts or the CLI's output goes through :func:`mask_secrets`.

Every occurrence of every secret is found in the text as given before any is hidden, so masking
one secret cannot break another's form (``user:pw`` masked first used to leave ``pw``'s other
occurrences half visible), and occurrences that overlap or touch become one ``***``. Error
descriptions (:func:`docstore.transient.scrub`), redacted URLs (:func:`docstore.urls.redact_url`,
which hides the password itself by the URL's structure) and the CLI's messages use it. No
docstore imports: every layer may use it.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from urllib.parse import unquote

REDACTED = "***"
"""What a hidden secret is shown as."""

MIN_SCRUBBED_SECRET = 4
"""Shorter secrets are not searched for in text: replacing every ``e`` would garble the
message and spell the password out (URLs are redacted by their structure instead)."""

SCAN_LIMIT = 1 << 14
"""Characters of a text :func:`scrub_secrets` searches at most when it cuts the result (a
text so dense with secrets that its masked start stays short is shown only that far)."""

_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")  # one run: a UTF-8 character may span several


def mask_secrets(text: str, secrets: Iterable[str], *, whole_escapes: bool = False) -> str:
    """``text`` with every occurrence of every secret (overlapping ones too) replaced by
    ``***``, all found in the original text first, so masking one cannot break another's;
    occurrences that overlap or touch are one ``***``.
    ``whole_escapes`` (a part of a URL as written): a secret is also found where the text
    spells it with other escapes (the user name ``%61%40bc`` for the password ``a@bc``), and
    the mask widens to whole runs of ``%XX`` escapes so it still decodes (``%40000`` less
    ``0000``: ``***``, not ``%4***``; ``%EF%BC%A0%3A`` less ``0%3A``: ``***``, not the half
    character ``%EF%BC``)."""
    wanted = [s for s in dict.fromkeys(secrets) if s]
    found = [s for s in wanted if s in text]
    written = [] if not whole_escapes or "%" not in text else _written_otherwise(text, wanted)
    if not found and not written:
        return text
    spans = _merged([*written, *(span for secret in found for span in _occurrences(text, secret))])
    if whole_escapes:
        spans = _merged([*spans, *_touched_escapes(text, spans)])
    shown, end = [], 0
    for start, stop in spans:
        shown += [text[end:start], REDACTED]
        end = stop
    shown.append(text[end:])
    return "".join(shown)


def scrub_secrets(text: str, secrets: Iterable[str], *, limit: int | None = None) -> str:
    """:func:`mask_secrets` for those ``secrets`` of :data:`MIN_SCRUBBED_SECRET` characters or
    more: what free text (an error message) is scrubbed with. ``limit``: the result is cut to
    that many characters (then ``…``), and only as much of ``text`` is searched as that needs —
    a server message quoting a megabyte literal costs no more than a short one."""
    found = [s for s in dict.fromkeys(secrets) if len(s) >= MIN_SCRUBBED_SECRET]
    if limit is None:
        return mask_secrets(text, found)
    longest = max(map(len, found), default=0)
    window = limit + longest
    while window < len(text):
        masked = mask_secrets(text[:window], found)
        # An occurrence cut by the window shows at most its first ``longest - 1`` characters,
        # at the end of ``masked``: with ``limit + longest`` characters or more, the first
        # ``limit`` are those of the whole text masked.
        if len(masked) >= limit + longest:
            return masked[:limit] + "…"
        if window >= SCAN_LIMIT:  # a long text dense with secrets: what is surely not one
            return masked[: max(0, min(limit, len(masked) - longest + 1))] + "…"
        window = min(window * 2, max(SCAN_LIMIT, limit + longest))
    masked = mask_secrets(text, found)
    return masked if len(masked) <= limit else masked[:limit] + "…"


def _occurrences(text: str, secret: str) -> list[tuple[int, int]]:
    """Where ``secret`` occurs in ``text``, overlapping occurrences merged. One regex match
    takes a whole run of occurrences ``period`` apart (``aaaa`` through a megabyte of ``a``
    is one match, not a million); the search then resumes where an occurrence that starts
    inside the run and ends beyond it would begin."""
    width, period = len(secret), _period(secret)
    run = re.compile(f"{re.escape(secret)}(?:{re.escape(secret[width - period :])})*")
    spans, pos = [], 0
    while found := run.search(text, pos):
        spans.append(found.span())
        pos = found.end() - width + 1
    return _merged(spans)


def _period(secret: str) -> int:
    """The smallest ``p`` with ``secret[i] == secret[i + p]`` for every ``i`` (KMP's border)."""
    border = [0] * len(secret)
    for i in range(1, len(secret)):
        k = border[i - 1]
        while k and secret[i] != secret[k]:
            k = border[k - 1]
        border[i] = k + (secret[i] == secret[k])
    return len(secret) - border[-1]


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` sorted, those that overlap or touch joined."""
    joined: list[tuple[int, int]] = []
    for start, stop in sorted(spans):
        if joined and start <= joined[-1][1]:
            joined[-1] = (joined[-1][0], max(joined[-1][1], stop))
        else:
            joined.append((start, stop))
    return joined


def _written_otherwise(text: str, secrets: list[str]) -> list[tuple[int, int]]:
    """Where ``text`` percent-decoded holds one of ``secrets``, as spans of ``text`` (a run
    of escapes is one piece: whatever part of it a secret covers, all of it is hidden)."""
    pieces: list[tuple[int, int]] = []  # the span of text each decoded character came from
    decoded: list[str] = []
    end = 0
    for run in [*_ESCAPES.finditer(text), None]:
        start = len(text) if run is None else run.start()
        pieces += [(i, i + 1) for i in range(end, start)]
        decoded.append(text[end:start])
        if run is not None:
            part = unquote(run[0])
            pieces += [run.span()] * len(part)
            decoded.append(part)
            end = run.end()
    plain = "".join(decoded)
    return [
        (pieces[start][0], pieces[stop - 1][1])
        for secret in secrets
        if secret in plain
        for start, stop in _occurrences(plain, secret)
    ]


def _touched_escapes(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The runs of ``%XX`` escapes in ``text`` that share a character with one of ``spans``
    (sorted, disjoint)."""
    ends = [stop for _, stop in spans]
    touched = []
    for run in _ESCAPES.finditer(text):
        i = bisect.bisect_right(ends, run.start())  # the first span ending after the run starts
        if i < len(spans) and spans[i][0] < run.end():
            touched.append(run.span())
    return touched
