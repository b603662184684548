"""Passwords the URL fuzz found in the open (helper-62's review, 2026-12-06): redaction that
cut a percent escape in half, and click's usage errors escaping fewer characters than the
CLI's scrubber expected. No database: these run before any connection is tried."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from docstore.cli import app
from docstore.urls import parse_url, redact_url


@pytest.mark.parametrize(
    ("url", "secret_forms"),
    [
        # the user "%40000" (decoded "@000") holds the password "0000" across an escape
        ("postgresql://%40000@127.0.0.1:1/db?password=0000", ["0000"]),
        # the user "%3A%40" (":@") holds the password written "A%40" ("A@")
        ("postgresql://%3A%40@127.0.0.1:1/db?password=A%40", ["A%40", "A@"]),
        # "0%3A" begins inside the last byte of U+FF20 (%EF%BC%A0): masking from that byte's
        # escape on left "%EF%BC", half a character, which is not UTF-8
        ("postgresql://%EF%BC%A0%3A@127.0.0.1:1/db?password=0%3A", ["0%3A", "0:"]),
    ],
)
def test_redaction_never_cuts_a_percent_escape_in_half(url: str, secret_forms: list[str]) -> None:
    """``redact_url`` masked the secret inside the raw user name: ``%4***`` — a URL that
    ``parse_url`` then refused, in messages that promise a usable description."""
    redacted = redact_url(url)
    assert redacted == "postgresql://***@127.0.0.1:1/db?password=***"
    assert parse_url(redacted).hosts == parse_url(url).hosts
    for form in secret_forms:
        assert form not in redacted


def test_redaction_still_keeps_what_is_not_the_secret() -> None:
    assert redact_url("postgresql://app%40x:secretpw@h:5433/db?sslmode=require") == (
        "postgresql://app%40x:***@h:5433/db?sslmode=require"
    )
    assert redact_url("postgresql://u:secretpw@h/secretpw?application_name=secretpw") == (
        "postgresql://u:***@h/***?application_name=***"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:abcd\ue000\x19@127.0.0.1:1/db",  # private use, then a C0 control
        "postgresql://u@127.0.0.1:1/db?password='\U00018cd6\x19@@",  # a Tangut letter
        "postgresql://u:'@@\xad\t@127.0.0.1:1/db",  # a soft hyphen (format), then a tab
        "postgresql://u:'@@\ue000\x1f@127.0.0.1:1/db",
    ],
)
def test_a_usage_error_never_shows_a_password_with_characters_click_does_not_escape(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """click escapes only C0/C1 controls in a usage error (``\\x19``) and prints a format,
    private-use or unassigned character as it is; the scrubber knew only "every category-C
    character escaped" and "none", so the password was printed (``\\ue000\\x19``)."""
    monkeypatch.setenv("COLUMNS", "1000")
    result = CliRunner().invoke(app, ["health", url])
    assert result.exit_code == 2 and "Usage:" in result.output
    password = url.rpartition("=")[2] if "?password=" in url else url[15:].rpartition("@")[0]
    escaped = "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 else c for c in password)
    for form in (password, escaped, escaped[-5:], password[-2:]):
        assert form not in result.output, result.output
