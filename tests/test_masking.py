"""Secrets masked all at once (``docstore.masking``): error descriptions used to replace one
secret after another, so a secret overlapping another (or itself) left its tail in the text."""

from __future__ import annotations

import itertools
import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import docstore
from docstore import masking
from docstore.cli.base import _clean
from docstore.errors import QueryError
from docstore.masking import MIN_SCRUBBED_SECRET, REDACTED, mask_secrets, scrub_secrets
from docstore.transient import MAX_MESSAGE, describe, scrub
from docstore.urls import redact_url
from tests.conftest import PgCluster, scram_reader
from tests.fuzzing import examples


def test_a_secret_overlapping_itself_is_hidden_whole() -> None:
    # one replace after another: "k9k9k9k9".replace("k9k9k9", "***") == "***k9"
    assert scrub('invalid input: "k9k9k9k9"', ("k9k9k9",)) == f'invalid input: "{REDACTED}"'


def test_two_overlapping_secrets_are_hidden_together() -> None:
    text = "at hunter22wolf now"
    assert scrub(text, ("hunter22", "er22wolf")) == f"at {REDACTED} now"
    assert scrub(text, ("er22wolf", "hunter22")) == f"at {REDACTED} now"


def test_short_secrets_are_not_searched_for_in_free_text() -> None:
    assert scrub("every e of the message", ("e",)) == "every e of the message"
    assert scrub_secrets("abc abcd", ("abc", "abcd")) == f"abc {REDACTED}"
    # redact_url and the CLI choose their own secrets; mask_secrets takes them as given
    assert mask_secrets("abc", ("abc",)) == REDACTED


def test_text_without_secrets_comes_back_unchanged() -> None:
    text = "division by zero"
    assert scrub_secrets(text, ("hunter22",)) is text
    assert mask_secrets("", ("", "hunter22")) == ""


def test_a_long_message_is_scrubbed_before_it_is_cut() -> None:
    secret = "s3cretpass"
    text = "x" * (MAX_MESSAGE - 4) + secret + "y" * 10
    scrubbed = scrub(text, (secret,))
    assert "s3cr" not in scrubbed
    assert scrubbed.endswith("…")


def test_occurrences_that_touch_are_one_mask() -> None:
    assert scrub("xx abcdefgh yy", ("abcd", "efgh")) == f"xx {REDACTED} yy"
    assert scrub("pw=hunter22hunter22", ("hunter22",)) == f"pw={REDACTED}"


def test_a_periodic_secret_through_a_periodic_text() -> None:
    """A run of occurrences is found as one (``aaaa`` in a megabyte of ``a``)."""
    assert mask_secrets("b" + "a" * 100_000 + "b", ["aaaa"]) == f"b{REDACTED}b"
    assert mask_secrets("aabaaabaa", ["aabaa"]) == REDACTED  # at 0 and at 4, overlapping
    assert mask_secrets("abcabcab.abcab", ["abcab"]) == f"{REDACTED}.{REDACTED}"


@settings(max_examples=examples(300), deadline=None)
@given(
    text=st.text(st.sampled_from("ab%4F0"), max_size=60),
    secrets=st.lists(st.text(st.sampled_from("ab%4F0"), min_size=1, max_size=8), max_size=4),
    whole_escapes=st.booleans(),
)
def test_masking_hides_exactly_the_characters_of_the_occurrences(
    text: str, secrets: list[str], whole_escapes: bool
) -> None:
    """The reference: one flag per character, every occurrence's characters set (and with
    ``whole_escapes`` every ``%XX`` run holding a set one), runs of set flags shown as ``***``."""
    hidden = [False] * len(text)
    for secret in secrets:
        for i in range(len(text) - len(secret) + 1):
            if text.startswith(secret, i):
                hidden[i : i + len(secret)] = [True] * len(secret)
    for run in re.finditer(r"(?:%[0-9A-Fa-f]{2})+", text) if whole_escapes else ():
        if any(hidden[run.start() : run.end()]):
            hidden[run.start() : run.end()] = [True] * (run.end() - run.start())
    runs = itertools.groupby(zip(text, hidden, strict=True), key=lambda pair: pair[1])
    want = "".join(REDACTED if h else "".join(c for c, _ in run) for h, run in runs)
    assert mask_secrets(text, secrets, whole_escapes=whole_escapes) == want


@settings(max_examples=examples(300), deadline=None)
@given(
    text=st.text(st.sampled_from("ab"), max_size=120),
    secrets=st.lists(st.text(st.sampled_from("ab"), min_size=4, max_size=9), max_size=3),
    limit=st.integers(0, 12),
    scan=st.integers(1, 40),
)
def test_a_text_dense_with_secrets_past_the_scan_limit_shows_less_never_more(
    text: str, secrets: list[str], limit: int, scan: int
) -> None:
    """Past ``SCAN_LIMIT`` characters the shown part is a prefix of the whole text masked."""
    saved, masking.SCAN_LIMIT = masking.SCAN_LIMIT, scan
    try:
        shown = scrub_secrets(text, secrets, limit=limit)
    finally:
        masking.SCAN_LIMIT = saved
    whole = scrub_secrets(text, secrets)
    reference = whole if len(whole) <= limit else whole[:limit] + "…"
    assert shown == reference or (shown.endswith("…") and whole.startswith(shown[:-1]))
    assert len(shown) <= limit + 1


_WRITTEN = st.sampled_from(["a", "@", "%61", "%40", "%41", "%C3%A9", "é", "%", "4"])


@settings(max_examples=examples(300), deadline=None)
@given(
    text=st.lists(_WRITTEN, max_size=20).map("".join),
    secrets=st.lists(st.text(st.sampled_from("a@é"), min_size=1, max_size=5), max_size=3),
)
def test_a_url_part_shows_no_secret_however_it_is_escaped(text: str, secrets: list[str]) -> None:
    """With ``whole_escapes``, no secret survives in the part as it decodes (``%61`` is
    ``a``), and what is kept still decodes to a piece of the original."""
    shown = mask_secrets(text, secrets, whole_escapes=True)
    for piece in shown.split(REDACTED):
        assert all(secret not in unquote(piece) for secret in secrets)
        assert unquote(piece) in unquote(text)


@settings(max_examples=examples(300), deadline=None)
@given(
    text=st.text(st.sampled_from("abk9"), max_size=80),
    secrets=st.lists(st.text(st.sampled_from("abk9"), min_size=1, max_size=9), max_size=3),
    limit=st.integers(0, 30),
)
def test_a_limited_scrub_is_the_whole_text_scrubbed_then_cut(
    text: str, secrets: list[str], limit: int
) -> None:
    """Only as much of the text is searched as the limit needs, with the same result."""
    whole = scrub_secrets(text, secrets)
    assert scrub_secrets(text, secrets, limit=limit) == (
        whole if len(whole) <= limit else whole[:limit] + "…"
    )


_SAFE = st.characters(blacklist_characters="*\x00", blacklist_categories=("Cs",))


@settings(max_examples=examples(300), deadline=None)
@given(
    text=st.text(st.sampled_from("abk9*-"), max_size=60),
    secrets=st.lists(st.text(st.sampled_from("abk9"), min_size=1, max_size=8), max_size=4),
)
def test_no_secret_survives_and_the_rest_is_kept(text: str, secrets: list[str]) -> None:
    """Every occurrence of every long-enough secret is gone, and whatever is not part of one
    stays, in order (a small alphabet makes overlaps the common case)."""
    out = scrub_secrets(text, secrets)
    for secret in secrets:
        if len(secret) >= MIN_SCRUBBED_SECRET:
            assert secret not in out.replace(REDACTED, "\0")
    kept = out.replace(REDACTED, "")
    it = iter(text)
    assert all(char in it for char in kept)  # a subsequence of the original


@settings(max_examples=examples(100), deadline=None)
@given(text=st.text(_SAFE, max_size=40), secret=st.text(_SAFE, min_size=4, max_size=12))
def test_a_secret_anywhere_in_any_text_is_hidden(text: str, secret: str) -> None:
    for placed in (secret + text, text + secret, text + secret + secret[1:] + text):
        assert secret not in scrub_secrets(placed, [secret]).replace(REDACTED, "\0")


async def test_a_server_error_echoing_an_overlapping_password_shows_none_of_it(
    pg: PgCluster, database_url: str
) -> None:
    """The server's message quotes the bad literal; the password overlaps itself in it (one
    replace after another showed ``"***k9"``)."""
    password = "k9k9k9"
    _role, url = await scram_reader(pg, database_url, "overlap_", password)
    async with docstore.connect(url, migrate=False) as store:
        with pytest.raises(QueryError) as info:
            await store.fetchval(f"SELECT '{password}k9'::int")
    # docstore's own error; its __cause__ is asyncpg's, which quotes the caller's own SQL
    texts = f"{info.value}\n{info.value!r}"
    assert "invalid input syntax for type integer" in texts
    assert "k9" not in texts.replace(password, "")  # no tail of it, and no whole one either
    assert password not in texts


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        # the user name spells the password a@bc with other escapes than the password's
        ("postgresql://%61%40bc:a%40bc@db.example/app", "postgresql://***:***@db.example/app"),
        ("postgresql://u:a%40bc@h/%61%40bcd", "postgresql://u:***@h/***d"),
        ("postgresql://u:p%C3%A9ssw@h/p%c3%a9ssw", "postgresql://u:***@h/***"),
        ("postgresql://u:s3cret@h/db?application_name=x%73%33cret", None),
    ],
)
def test_a_url_part_spelling_the_password_with_other_escapes_is_masked(
    url: str, redacted: str | None
) -> None:
    shown = redact_url(url)
    if redacted is not None:
        assert shown == redacted
    assert unquote(shown).count("a@bc") + unquote(shown).count("s3cret") == 0
    assert unquote(shown).count("péssw") == 0


def test_cli_arguments_whose_forms_overlap_are_hidden_together() -> None:
    """One argument's URL ending inside another's left the rest of a password on screen
    when the first was replaced alone."""
    first = "postgres://u:sec(retpw@h/a_long_database_name"
    second = "x://h?password=postgres://u:sec"
    argv = ["docstore", first, second]
    assert _clean(f"error: x://h?password={first} end", argv) == f"error: {REDACTED} end"
    apart = _clean(f"error: {first} and {second} end", argv)
    kept = "postgres://u:***@h/a_long_database_name"
    assert apart == f"error: {kept} and x://h?password={REDACTED} end"
    assert "retpw" not in apart and "sec(" not in apart


def test_describe_uses_the_same_masking() -> None:
    exc = ValueError("token hunter22wolf refused")
    assert describe(exc, ("hunter22", "er22wolf")) == f"ValueError: token {REDACTED} refused"
