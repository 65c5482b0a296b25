"""Per-user accounts in the workspace's ``users`` table (this module is its only writer).

Passwords are stored as ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` with a random
16-byte salt per password, and compared in constant time. Names are unique by their
identity key (NFKC, blanks collapsed, case folded), so "  ANN  " and "ann" are one
person. Signing in with a wrong name or a wrong password gives the same message and
costs one scrypt either way (an unknown name is checked against a dummy hash).

Admins create accounts, reset passwords, disable them and grant admin rights; the
first account (see :func:`bootstrap_admin`) is always an admin, and the last enabled
admin can be neither disabled nor demoted. Every change is written to the audit log.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import sqlite3
import unicodedata
from dataclasses import dataclass, field

from finetune_core.auth import audit, sessions
from finetune_core.auth.access import ANONYMOUS, PermissionDenied, User, identity_key
from finetune_core.store import CLI_CREATOR_PREFIX, StoreError, Workspace, check_name, utc_now

MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SALT_BYTES, _HASH_BYTES = 16, 32
_MAX_N = 2**20  # a stored hash never makes a check cost more than ~1 GiB of scrypt memory
WRONG_CREDENTIALS = "Wrong name or password."
# Names that already mean something else: CLI runs' creators, records with no creator.
_RESERVED_PREFIXES = (CLI_CREATOR_PREFIX,)
_RESERVED_NAMES = {ANONYMOUS}


class AccountError(StoreError):
    """An account operation was refused; the message says why and what to do."""


class SignInError(Exception):
    """Sign-in refused; the message is safe to show (it never says which part was wrong)."""


@dataclass(frozen=True)
class Account:
    """A person who may sign in. ``password_hash`` never appears in repr()."""

    name: str
    is_admin: bool = False
    disabled: bool = False
    created_at: str = ""
    created_by: str = ""
    password_hash: str = field(default="", repr=False)

    def user(self) -> User:
        return User(self.name, is_admin=self.is_admin)


# ----------------------------------------------------------------------------- hashing
def hash_password(password: str) -> str:
    """A fresh salted scrypt hash of ``password`` in the stored format."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, _HASH_BYTES)
    return "$".join(
        ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)]
    )


def password_matches(password: str, stored: str) -> bool:
    """Whether ``password`` hashes to ``stored`` (False for a malformed ``stored``)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        n_, r_, p_ = int(n), int(r), int(p)
        salt_b, digest_b = _unb64(salt), _unb64(digest)
    except (ValueError, binascii.Error):
        return False
    if kind != "scrypt" or not (1 < n_ <= _MAX_N and n_ & (n_ - 1) == 0):
        return False
    if not (1 <= r_ <= 32 and 1 <= p_ <= 16 and salt_b and digest_b):
        return False
    given = _scrypt(password, salt_b, n_, r_, p_, len(digest_b))
    return hmac.compare_digest(given, digest_b)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=2**31 - 1
    )


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def check_password_rules(password: str) -> None:
    """AccountError unless ``password`` is long enough (and not absurdly long)."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(
            f"A password needs at least {MIN_PASSWORD_CHARS} characters (this one has "
            f"{len(password)}); a few unrelated words make a good one."
        )
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"A password can have at most {MAX_PASSWORD_CHARS} characters.")


def check_account_name(name: str) -> str:
    """The name to store (NFKC, blanks collapsed); AccountError if it is not allowed."""
    try:
        name = check_name(unicodedata.normalize("NFKC", name or ""), "user")
    except StoreError as exc:
        raise AccountError(str(exc)) from exc
    name = " ".join(name.split())
    invisible = sorted({f"U+{ord(c):04X}" for c in name if unicodedata.category(c) == "Cf"})
    if invisible:
        raise AccountError(
            f"A user name cannot contain invisible characters (found {', '.join(invisible)})."
        )
    key = identity_key(name)
    if key in _RESERVED_NAMES or key.startswith(_RESERVED_PREFIXES):
        raise AccountError(
            f"{name!r} is reserved (it marks records with no creator or made by the CLI); "
            "choose another name."
        )
    return name


# ----------------------------------------------------------------------------- reading
def list_accounts(workspace: Workspace) -> list[Account]:
    """Every account, by name."""
    rows = workspace.read().execute("SELECT * FROM users ORDER BY name COLLATE NOCASE")
    return [_account(row) for row in rows]


def has_accounts(workspace: Workspace) -> bool:
    return workspace.read().execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def get_account(workspace: Workspace, name: str) -> Account | None:
    """The account whose identity key matches ``name`` ("ANN " finds "Ann"), if any."""
    return _find(list_accounts(workspace), name)


def _find(accounts: list[Account], name: str) -> Account | None:
    key = identity_key(name or "")
    return next((a for a in accounts if identity_key(a.name) == key), None) if key else None


def _account(row: sqlite3.Row) -> Account:
    return Account(
        name=row["name"],
        is_admin=bool(row["is_admin"]),
        disabled=bool(row["disabled"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        password_hash=row["password_hash"],
    )


def session_material(account: Account) -> str:
    """What a session cookie's signature is keyed with: it changes with the password (a
    fresh salt each time), so setting a password ends every older session."""
    return f"account\0{account.name}\0{account.password_hash}"


# ----------------------------------------------------------------------------- sign-in
def authenticate(workspace: Workspace, name: str, password: str) -> Account:
    """The account for ``name`` if ``password`` is its password; SignInError otherwise.

    One scrypt runs whether or not the name exists, and the message does not say which
    part was wrong. Only someone who knows the password learns that an account is off.
    """
    account = get_account(workspace, name) if name.strip() else None
    stored = account.password_hash if account and account.password_hash else _dummy_hash()
    ok = password_matches(password[:MAX_PASSWORD_CHARS], stored)
    if account is None or not ok or not account.password_hash:
        raise SignInError(WRONG_CREDENTIALS)
    if account.disabled:
        raise SignInError(f"The account {account.name} is disabled; ask an admin to enable it.")
    return account


# ----------------------------------------------------------------------------- changes
def create_account(
    workspace: Workspace, by: User, name: str, password: str, *, is_admin: bool = False
) -> Account:
    """A new account (admins only). The workspace's first account must be an admin."""
    _require_admin(by, "create accounts")
    return _insert(workspace, by.name, name, password, is_admin=is_admin, first_only=False)


def bootstrap_admin(workspace: Workspace, name: str, password: str, *, by: str = "") -> Account:
    """The first admin account, allowed only while the workspace has no account at all
    (the caller has proven it may set the server up: the CLI, or the setup password)."""
    return _insert(workspace, by or name, name, password, is_admin=True, first_only=True)


def _insert(
    workspace: Workspace, actor: str, name: str, password: str, *, is_admin: bool, first_only: bool
) -> Account:
    name = check_account_name(name)
    check_password_rules(password)
    password_hash = hash_password(password)  # outside the write lock: it takes a while
    with workspace.transaction() as conn:
        existing = [_account(row) for row in conn.execute("SELECT * FROM users")]
        if first_only and existing:
            raise AccountError(
                "This workspace already has accounts; an admin creates new ones on the Users "
                "page or with: python -m finetune_core users add NAME"
            )
        if not existing and not is_admin:
            raise AccountError(
                "The first account must be an admin (otherwise nobody could manage accounts)."
            )
        clash = _find(existing, name)
        if clash is not None:
            raise AccountError(f"There is already an account named {clash.name!r}.")
        account = Account(name, is_admin, False, utc_now(), actor, password_hash)
        conn.execute(
            "INSERT INTO users (name, password_hash, is_admin, disabled, created_at, created_by)"
            " VALUES (?, ?, ?, 0, ?, ?)",
            (name, password_hash, int(is_admin), account.created_at, actor),
        )
    audit.record(workspace, actor, "create user", "user", name, "admin" if is_admin else "")
    return account


def set_password(workspace: Workspace, by: User, name: str, password: str) -> None:
    """A new password (the user themself or an admin); every session of theirs ends, a
    copied cookie too (the caller signs the person who changed their own password in
    again)."""
    account = _existing(workspace, name)
    if identity_key(by.name) != identity_key(account.name):
        _require_admin(by, "set another person's password")
    check_password_rules(password)
    password_hash = hash_password(password)
    with workspace.transaction() as conn:
        conn.execute("UPDATE users SET password_hash=? WHERE name=?", (password_hash, account.name))
        ended = sessions.end_all(workspace, account.name, conn=conn)
    audit.record(workspace, by.name, "set password", "user", account.name,
                 _ended(ended))  # fmt: skip


def set_disabled(workspace: Workspace, by: User, name: str, disabled: bool) -> None:
    """Disable (sign-in refused, sessions end) or enable an account (admins only)."""
    _require_admin(by, "disable or enable accounts")
    account = _existing(workspace, name)
    with workspace.transaction() as conn:
        if disabled and account.is_admin:
            _keep_an_admin(conn, account.name)
        conn.execute("UPDATE users SET disabled=? WHERE name=?", (int(disabled), account.name))
        ended = sessions.end_all(workspace, account.name, conn=conn) if disabled else 0
    audit.record(workspace, by.name, "disable user" if disabled else "enable user", "user",
                 account.name, _ended(ended))  # fmt: skip


def set_admin(workspace: Workspace, by: User, name: str, is_admin: bool) -> None:
    """Grant or take away admin rights (admins only)."""
    _require_admin(by, "change admin rights")
    account = _existing(workspace, name)
    with workspace.transaction() as conn:
        if not is_admin and account.is_admin:
            _keep_an_admin(conn, account.name)
        conn.execute("UPDATE users SET is_admin=? WHERE name=?", (int(is_admin), account.name))
    audit.record(workspace, by.name, "make admin" if is_admin else "unmake admin", "user",
                 account.name)  # fmt: skip


def _ended(sessions_ended: int) -> str:
    return f"{sessions_ended} session(s) ended" if sessions_ended else ""


def _keep_an_admin(conn: sqlite3.Connection, losing: str) -> None:
    others = conn.execute(
        "SELECT COUNT(*) FROM users WHERE is_admin=1 AND disabled=0 AND name<>?", (losing,)
    ).fetchone()[0]
    if not others:
        raise AccountError(
            f"{losing} is the last enabled admin; make another account an admin first."
        )


def _existing(workspace: Workspace, name: str) -> Account:
    account = get_account(workspace, name)
    if account is None:
        raise AccountError(f"No account named {name.strip()!r}.")
    return account


def _require_admin(by: User, what: str) -> None:
    if not by.is_admin:
        raise PermissionDenied(f"Only an admin can {what}.")
