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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:require@h/db?sslmode=require", "sslmode=require"),
        ("postgresql://u:erif@h/db?sslmode=verify-full", "sslmode=verify-full"),
        ("postgresql://u:-wri@h/db?target_session_attrs=read-write", "=read-write"),
        ("postgresql://u:5432@h/db?port=5432,5433&host=a,b", "port=5432,5433&host=a,b"),
        ("postgresql://u:e%3Dxy@h/db?application_name=xyz", "application_name=xyz"),
        ("postgresql://u:abcd@h/db?host=%5B::1%5D&password=::1%5D", "host=%5B::1%5D&"),
        ("postgresql://u:tmp,@h/db?host=/tmp,/var", "host=/tmp,/var"),
    ],
)
def test_redaction_keeps_the_query_parameters_asyncpg_reads(url: str, shown: str) -> None:
    """A secret found inside ``sslmode``, ``target_session_attrs``, ``port`` or ``host`` (or
    across a parameter's ``=``) was masked there: the redacted URL said something else or
    could not be read at all (``sslmode=v***y-full``, ``port=***,5433``,
    ``application_nam***z``). Those stay as written, like the authority's hosts (review 64)."""
    redacted = redact_url(url)
    assert shown in redacted
    assert parse_url(redacted).hosts == parse_url(url).hosts
    assert parse_url(redacted).ports == parse_url(url).ports
    assert ":***@" in redacted


def test_other_query_values_are_still_scrubbed_apart_from_their_key() -> None:
    assert redact_url("postgresql://u:secretpw@h/db?application_name=secretpw") == (
        "postgresql://u:***@h/db?application_name=***"
    )
    assert redact_url("postgresql://u:secretpw@h/db?sslpassword=zz&passfile=/x") == (
        "postgresql://u:***@h/db?sslpassword=***&passfile=***"
    )


def test_a_usage_error_scrubs_every_secret_before_any_of_them_breaks_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The secrets of a URL ``parse_url`` refuses are ``user:pw`` and ``pw``; scrubbing the
    first's pieces one secret at a time broke the second's written form and left
    ``abc\\x01de\\x02***`` — 7 of the password's 12 characters — on the screen (review 64)."""
    password = "abc\x01de\x02xyzqq"
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{password}@127.0.0.1:1/db")
    result = CliRunner().invoke(app, ["health", password])
    assert result.exit_code == 2
    for piece in ("abc", "de\\x02", "xyzqq", "\\x01"):
        assert piece not in result.output, result.output
