"""Stay-signed-in tokens: round trip, forgery, expiry, password change, secret file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from finetune_core.auth.session_token import (
    DEFAULT_LIFETIME_S,
    SECRET_FILE,
    issue_token,
    server_secret,
    verify_token,
)

SECRET = b"s" * 32


@pytest.mark.parametrize("name", ["alice", "Zoë Ünïcode", "a.b=c; d", "<script>x</script>"])
def test_a_token_gives_back_the_name_it_was_issued_for(name: str) -> None:
    token = issue_token(name, SECRET, "pw", now=1000)
    assert all(c.isalnum() or c in "-_." for c in token)  # safe in a cookie value
    assert verify_token(token, SECRET, "pw", now=1000 + DEFAULT_LIFETIME_S - 1) == name


def test_expired_forged_or_foreign_tokens_are_refused() -> None:
    token = issue_token("alice", SECRET, "pw", lifetime_s=60, now=1000)
    assert verify_token(token, SECRET, "pw", now=1059) == "alice"
    assert verify_token(token, SECRET, "pw", now=1061) is None  # expired
    assert verify_token(token, SECRET, "new password", now=1000) is None  # password changed
    assert verify_token(token, b"t" * 32, "pw", now=1000) is None  # another server
    name, expires, signature = token.split(".")
    bob = issue_token("bob", SECRET, "other", now=1000).split(".")[0]
    assert verify_token(f"{bob}.{expires}.{signature}", SECRET, "pw", now=1000) is None
    later = str(int(expires) + 10**6)
    assert verify_token(f"{name}.{later}.{signature}", SECRET, "pw", now=1000) is None
    for junk in [None, "", "a.b", "a.b.c.d", "x" * 5000, f"{name}.{expires}.{'0' * 64}"]:
        assert verify_token(junk, SECRET, "pw", now=1000) is None


def test_the_server_secret_is_random_private_and_stable(tmp_path: Path) -> None:
    first = server_secret(tmp_path / "ws")
    assert len(first) == 32 and server_secret(tmp_path / "ws") == first
    mode = stat.S_IMODE((tmp_path / "ws" / SECRET_FILE).stat().st_mode)
    assert mode == 0o600
    assert server_secret(tmp_path / "other") != first
    assert [p.name for p in (tmp_path / "ws").iterdir()] == [SECRET_FILE]  # no temp left
