"""Signed "stay signed in" tokens for the accounts (password) mode.

A browser reload starts a new Streamlit session, which would ask for the password again.
After a sign-in the app stores a token in a cookie instead: the name, an expiry time and
an HMAC over both. The name part also carries the id of the server-side session the
cookie belongs to (``auth.sessions``): a cookie counts only while that session lives, so
signing out or an admin ending the session revokes every copy of it. The key mixes a random server secret (kept in the workspace, never
sent anywhere) with the account's session material (``accounts.session_material``: its
password hash, new with every password change), so a password change ends that
account's older cookies and deleting the secret file signs every browser out. A
disabled account is refused when the cookie is read (``ui/auth.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

COOKIE_NAME = "finetune_session"
_SESSION_SEP = "\0"  # between the name and the session id; no account name holds it
DEFAULT_LIFETIME_S = 7 * 24 * 3600
SECRET_FILE = ".session_secret"


def server_secret(workspace_root: Path) -> bytes:
    """The workspace's random signing secret, created (readable by its owner only) once."""
    path = Path(workspace_root) / SECRET_FILE
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{SECRET_FILE}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    try:
        os.link(temp, path)  # the first writer wins; others read its secret
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    return path.read_bytes()


def _key(secret: bytes, password: str) -> bytes:
    return hmac.new(secret, b"finetune-session\0" + password.encode(), hashlib.sha256).digest()


def _sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Claims:
    """What a genuine, unexpired token says: the account and its session's secret id."""

    name: str
    session: str = ""


def issue_token(
    name: str,
    secret: bytes,
    password: str,
    *,
    session: str = "",
    lifetime_s: int = DEFAULT_LIFETIME_S,
    now: float | None = None,
) -> str:
    """A cookie-safe token that :func:`verify_token` turns back into ``name`` until it
    expires (and :func:`read_token` into the name and ``session``)."""
    if _SESSION_SEP in name or _SESSION_SEP in session:
        raise ValueError("a name or session id cannot contain a NUL character")
    expires = int((time.time() if now is None else now) + lifetime_s)
    body = f"{name}{_SESSION_SEP}{session}" if session else name
    encoded = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    payload = f"{encoded}.{expires}"
    return f"{payload}.{_sign(_key(secret, password), payload)}"


def claimed_name(token: str | None) -> str | None:
    """The name a token *claims*, unverified: only for choosing whose material to check it
    with (:func:`verify_token` decides whether it is genuine)."""
    if not token or len(token) > 1024 or token.count(".") != 2:
        return None
    body = _decode(token.split(".")[0])
    return body.partition(_SESSION_SEP)[0] or None if body else None


def verify_token(
    token: str | None, secret: bytes, password: str, *, now: float | None = None
) -> str | None:
    """The signed-in name in ``token``, or None when it is missing, forged or expired
    (whether its session still lives is ``auth.sessions``' question)."""
    claims = read_token(token, secret, password, now=now)
    return claims.name if claims else None


def read_token(
    token: str | None, secret: bytes, password: str, *, now: float | None = None
) -> Claims | None:
    """The name and session id in ``token``; None when it is missing, forged or expired."""
    if not token or len(token) > 1024:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    encoded, expires, signature = parts
    if not hmac.compare_digest(_sign(_key(secret, password), f"{encoded}.{expires}"), signature):
        return None
    try:
        if int(expires) < (time.time() if now is None else now):
            return None
    except ValueError:
        return None
    name, _, session = (_decode(encoded) or "").partition(_SESSION_SEP)
    return Claims(name, session) if name else None


def _decode(encoded: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
