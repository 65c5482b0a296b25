"""Sign-in cookies for accounts: issued with a server-side session, checked against it.

A cookie (``session_token``) is signed with the workspace's secret and the account's
session material (its password hash), and names a session of ``auth.sessions``. It
signs a browser in only while all of these hold: the signature is genuine, it has not
expired, the account exists and is enabled, its password is the one it was issued
under, and its session has not been ended (sign-out, password change, disabling, an
admin). ``ui/auth.py`` is the caller; the rules are here so they are tested without
Streamlit.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from finetune_core.auth import accounts, session_token, sessions
from finetune_core.auth.accounts import Account
from finetune_core.store import Workspace


@dataclass(frozen=True)
class SignedIn:
    """Who a cookie signs in, and the secret id of its session (for signing out)."""

    account: Account
    session: str


def issue_cookie(
    workspace: Workspace,
    account: Account,
    secret: bytes,
    *,
    label: str = "",
    lifetime_s: int = session_token.DEFAULT_LIFETIME_S,
    now: float | None = None,
) -> tuple[str, str]:
    """A new session for ``account`` and its cookie token: (token, session secret id)."""
    secret_id, _ = sessions.start(workspace, account.name, label=label, lifetime_s=lifetime_s,
                                  now=now)  # fmt: skip
    token = session_token.issue_token(
        account.name,
        secret,
        accounts.session_material(account),
        session=secret_id,
        lifetime_s=lifetime_s,
        now=now,
    )
    return token, secret_id


def account_for_cookie(
    workspace: Workspace, token: str | None, secret: bytes, *, now: float | None = None
) -> SignedIn | None:
    """The account ``token`` signs in, or None (forged, expired, ended, account off)."""
    claimed = session_token.claimed_name(token)
    account = accounts.get_account(workspace, claimed) if claimed else None
    if account is None or account.disabled:
        return None
    claims = session_token.read_token(token, secret, accounts.session_material(account), now=now)
    if claims is None or claims.name != account.name or not claims.session:
        return None  # a token from before sessions existed names none: sign in again
    if not sessions.is_live(workspace, account.name, claims.session, now=now):
        return None
    return SignedIn(account, claims.session)


def still_signed_in(workspace: Workspace, name: str, material: str, session: str) -> Account | None:
    """The account of a browser tab signed in as ``name`` with ``material`` in ``session``,
    if all three still hold (another tab may have signed out, an admin ended it, the
    password changed or the account was disabled)."""
    account = accounts.get_account(workspace, name) if name else None
    if account is None or account.disabled:
        return None
    if not hmac.compare_digest(accounts.session_material(account), material):
        return None
    return account if sessions.is_live(workspace, account.name, session) else None


def sign_out(workspace: Workspace, name: str, session: str) -> bool:
    """End this browser's session: every copy of its cookie stops working."""
    return sessions.end(workspace, name, session) if name and session else False
