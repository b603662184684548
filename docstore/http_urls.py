"""http(s) URLs — a metrics endpoint (``docstore stats --from``) — as docstore shows them:
not database URLs, so their port is not taken for a password (:func:`docstore.urls.redact_url`
hands them here)."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable

from docstore.masking import REDACTED


def is_http(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def redact_http(url: str, fallback: Callable[[str], str]) -> str:
    """``url`` with host, port and path kept, its password, the query's values and value-less
    query items hidden;
    ``fallback`` for one ``urlsplit`` refuses."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return fallback(url)
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    if parts.username is not None:
        password = f":{REDACTED}" if parts.password is not None else ""
        netloc = f"{parts.username}{password}@{netloc}"
    # a value-less item (?s3cr3t) may be a token itself: hidden whole
    query = "&".join(
        f"{item.split('=', 1)[0]}={REDACTED}" if "=" in item else REDACTED
        for item in parts.query.split("&")
        if item
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def http_secrets(url: str) -> list[str]:
    """The password in ``url``, as written and decoded."""
    with contextlib.suppress(ValueError):
        password = urllib.parse.urlsplit(url).password or ""
        return [password, urllib.parse.unquote(password)]
    return []
