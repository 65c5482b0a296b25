"""Sign-in before any page renders, and who is signed in.

``app.py`` calls :func:`require_login` before ``st.navigation(...).run()``; pages call
:func:`current_user`. The rules themselves live in ``finetune_core.auth`` (``access``:
modes and permissions, ``accounts``: per-user passwords, ``proxy``: the trusted header).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAuthError

from finetune_core.auth import accounts, audit, session_token, sessions, signin
from finetune_core.auth.access import (
    AccessConfigError,
    AccessSettings,
    User,
    check_password,
    load_access_settings,
    make_user,
    with_accounts,
)
from finetune_core.auth.accounts import Account, AccountError, SignInError
from finetune_core.auth.proxy import UVICORN_DEFAULT_FORWARDED, ProxyDecision, trusted_identity
from finetune_core.store import Workspace
from ui.settings import workspace_root

FAILED_DELAY_S = 1.0  # wait after a wrong password, times the session's failures so far
MAX_DELAY_S = 8.0
NAME_KEY = "user_name"  # open mode: the name typed in the sidebar
_SIGNED_IN_KEY = "auth_user"  # password mode: the account signed in
_MATERIAL_KEY = "auth_material"  # ... and its session material when it signed in
_SESSION_KEY = "auth_session"  # ... and the secret id of its server-side session
_FAILURES_KEY = "auth_failures"
_COOKIE_TO_SET = "auth_cookie_to_set"  # a fresh token the browser has not stored yet
_SIGNED_OUT = "auth_signed_out"  # this tab signed out: ignore (and clear) its cookie
# Wrong attempts wait one after another, so parallel sessions cannot guess faster.
_FAILURE_LOCK = threading.Lock()


@st.cache_resource(show_spinner=False)
def _open_accounts_workspace(root: str) -> Workspace:
    return Workspace(root)


def _workspace() -> Workspace:
    # ui.services imports this module, so the accounts keep their own handle on the workspace.
    return _open_accounts_workspace(str(workspace_root()))


def access_settings() -> AccessSettings:
    """The server's access settings: environment, then ``.streamlit/secrets.toml``; an
    otherwise open server asks for sign-in once the workspace has accounts."""
    settings = load_access_settings(_secrets(), os.environ)
    if settings.auth_mode == "open":
        settings = with_accounts(settings, accounts.has_accounts(_workspace()))
    return settings


def _secrets() -> Mapping[str, Any] | None:
    try:
        return st.secrets.to_dict()
    except FileNotFoundError as exc:  # StreamlitSecretNotFoundError
        if getattr(exc, "error_id", "") == "no-secrets-found":
            return None
        # A secrets file that does not parse must not silently open the app to everyone.
        raise AccessConfigError(f"Could not read .streamlit/secrets.toml: {exc}") from exc


def current_user() -> User:
    """Who is using the app (``User("")`` if nobody is signed in yet)."""
    settings = access_settings()
    if settings.auth_mode == "oidc":
        return _oidc_user(settings) if st.user.get("is_logged_in") else User("")
    if settings.auth_mode == "proxy":
        decision = _proxy_decision(settings)
        return make_user(settings, decision.identity) if decision.identity else User("")
    if settings.auth_mode == "password":
        account = _session_account()
        return account.user() if account else User("")
    return make_user(settings, str(st.session_state.get(NAME_KEY, "")))


def signed_in() -> bool:
    """Whether the pages may show: open access, or someone signed in. Renders nothing."""
    try:
        settings = access_settings()
    except AccessConfigError:
        return False
    if settings.auth_mode == "open":
        return True
    return bool(current_user().name)


def require_login() -> User:
    """Return the signed-in user, or show the sign-in screen and stop the script run."""
    try:
        settings = access_settings()
    except AccessConfigError as exc:
        st.title("Finetune Dashboard")
        st.error(f"The access settings are invalid, so the app stays closed. {exc}")
        st.stop()
    if settings.auth_mode == "oidc":
        return _oidc_login(settings)
    if settings.auth_mode == "proxy":
        return _proxy_login(settings)
    if settings.auth_mode == "password":
        return _password_login(settings)
    return current_user()


def sidebar_user_box(user: User) -> None:
    """Who is signed in and a sign-out button; in open mode, a name field instead."""
    settings = access_settings()
    with st.sidebar:
        if settings.auth_mode == "open":
            st.text_input(
                "Your name",
                key=NAME_KEY,
                placeholder="shown on your runs",
                help="Recorded as the creator of the datasets and runs you start.",
            )
            st.caption("Open access: no sign-in. Anyone who can reach this server can use it.")
            return
        shown = str(st.user.get("name") or user.name) if settings.auth_mode == "oidc" else user.name
        with st.container(horizontal=True, gap="small", vertical_alignment="center"):
            st.text(f"Signed in as {shown}")
            if user.is_admin:
                st.badge("admin", color="violet")
        if settings.auth_mode == "proxy":
            st.caption("Signed in through the organisation's sign-in proxy.")
            return
        token = st.session_state.pop(_COOKIE_TO_SET, None)
        if token:
            _store_cookie(token, session_token.DEFAULT_LIFETIME_S)
        if settings.auth_mode == "password":
            _change_password_box(user)
        if st.button("Sign out", icon=":material/logout:", key="auth_sign_out"):
            if settings.auth_mode == "oidc":
                st.logout()
            else:
                _sign_out()
                st.session_state[_SIGNED_OUT] = True
                st.rerun()


# ----------------------------------------------------------------------------- OIDC
def _oidc_user(settings: AccessSettings) -> User:
    info = st.user
    name = str(info.get("email") or info.get("preferred_username") or info.get("sub") or "")
    user = make_user(settings, name)
    if info.get("email_verified") is False:  # an unverified address must not grant admin
        return User(user.name, is_admin=False)
    return user


def _oidc_login(settings: AccessSettings) -> User:
    if st.user.get("is_logged_in"):
        return _oidc_user(settings)
    st.title("Finetune Dashboard")
    st.write("Sign in with your organisation account to continue.")
    auth = (_secrets() or {}).get("auth") or {}
    # [auth] with client_id is the default provider; [auth.<name>] sections are named ones.
    providers: list[str | None] = [None] if "client_id" in auth else []
    providers += [key for key, value in auth.items() if isinstance(value, Mapping)]
    for provider in providers or [None]:
        label = f"Sign in with {provider.title()}" if provider else "Sign in"
        if st.button(label, type="primary", icon=":material/login:", key=f"login_{provider}"):
            try:
                st.login(provider)
            except StreamlitAuthError as exc:
                st.error(f"Sign-in is misconfigured on this server: {exc}")
    st.stop()


# ----------------------------------------------------------------------------- proxy
def _proxy_decision(settings: AccessSettings) -> ProxyDecision:
    return trusted_identity(
        st.context.headers,
        st.context.ip_address,
        header=settings.trusted_header,
        proxies=settings.trusted_proxies,
        # uvicorn (Streamlit's server) reads this variable to decide whose X-Forwarded-For
        # replaces the peer address; proxy.trusted_identity needs to know.
        forwarded_allow=os.environ.get("FORWARDED_ALLOW_IPS", UVICORN_DEFAULT_FORWARDED),
    )


def _proxy_login(settings: AccessSettings) -> User:
    decision = _proxy_decision(settings)
    if decision.identity:
        return make_user(settings, decision.identity)
    st.title("Finetune Dashboard")
    st.error(f"Not signed in. {decision.reason}")
    st.stop()


# ----------------------------------------------------------------------------- accounts
def _session_account() -> Account | None:
    """This session's account, after a cookie restore; None (and the session forgotten)
    once the account is gone, disabled, its password changed since it signed in, or its
    server-side session ended (signed out in another tab, ended by an admin)."""
    _restore_from_cookie()
    name = str(st.session_state.get(_SIGNED_IN_KEY, ""))
    if not name:
        return None
    account = signin.still_signed_in(
        _workspace(),
        name,
        str(st.session_state.get(_MATERIAL_KEY, "")),
        str(st.session_state.get(_SESSION_KEY, "")),
    )
    if account is None:
        _forget_session()
    return account


def _sign_in(account: Account) -> None:
    """Start a server-side session for ``account`` in this tab; its cookie is set next."""
    token, session = signin.issue_cookie(_workspace(), account, _secret(), label=_browser())
    _remember(account, session)
    st.session_state.pop(_FAILURES_KEY, None)
    st.session_state.pop(_SIGNED_OUT, None)
    st.session_state[_COOKIE_TO_SET] = token


def _remember(account: Account, session: str) -> None:
    st.session_state[_SIGNED_IN_KEY] = account.name
    st.session_state[_MATERIAL_KEY] = accounts.session_material(account)
    st.session_state[_SESSION_KEY] = session


def _forget_session() -> None:
    st.session_state.pop(_SIGNED_IN_KEY, None)
    st.session_state.pop(_MATERIAL_KEY, None)
    st.session_state.pop(_SESSION_KEY, None)


def _sign_out() -> None:
    """End this tab's server-side session (a copied cookie stops working) and forget it."""
    signin.sign_out(
        _workspace(),
        str(st.session_state.get(_SIGNED_IN_KEY, "")),
        str(st.session_state.get(_SESSION_KEY, "")),
    )
    _forget_session()


def _browser() -> str:
    """A short label for the admin's session list: the browser's User-Agent."""
    try:
        agent = str(st.context.headers.get("User-Agent") or "")
    except Exception:  # no request headers (AppTest): the label is only informative
        agent = ""
    return agent[: sessions.MAX_LABEL_CHARS]


def _failed_attempt() -> None:
    failures = int(st.session_state.get(_FAILURES_KEY, 0)) + 1
    st.session_state[_FAILURES_KEY] = failures
    with _FAILURE_LOCK:
        time.sleep(min(FAILED_DELAY_S * failures, MAX_DELAY_S))


def _password_login(settings: AccessSettings) -> User:
    account = _session_account()
    if account is not None:
        return account.user()
    if st.session_state.get(_SIGNED_OUT):
        _store_cookie("", 0)  # forget this browser's stay-signed-in cookie
    st.title("Finetune Dashboard")
    workspace = _workspace()
    if not accounts.has_accounts(workspace):
        _first_admin_form(settings, workspace)
        st.stop()
    with st.form("finetune_login", clear_on_submit=True):
        typed_name = st.text_input("Your name", max_chars=200, placeholder="your account name")
        typed_password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        try:
            account = accounts.authenticate(workspace, typed_name, typed_password)
        except SignInError as exc:
            _failed_attempt()
            st.error(str(exc))
        else:
            _sign_in(account)
            st.rerun()
    st.caption("No account yet? Ask an admin of this server to create one.")
    st.stop()


def _first_admin_form(settings: AccessSettings, workspace: Workspace) -> None:
    """The first admin account, for whoever knows the server's setup password (the old
    shared password): it proves the person set the server up, and works only once."""
    st.info(
        "No account exists yet. Create the first admin account with the server's setup "
        "password (FINETUNE_PASSWORD), or on the server run: "
        "`python -m finetune_core users add NAME --admin`",
        icon=":material/person_add:",
    )
    with st.form("finetune_first_admin", clear_on_submit=True):
        name = st.text_input("Admin name", max_chars=200)
        password = st.text_input("New password", type="password")
        repeat = st.text_input("Repeat the new password", type="password")
        setup = st.text_input("Setup password", type="password")
        submitted = st.form_submit_button("Create the admin account", type="primary")
    if not submitted:
        return
    if not check_password(settings, setup):
        _failed_attempt()
        st.error("Wrong setup password. It is the server's FINETUNE_PASSWORD.")
    elif password != repeat:
        st.error("The two new passwords differ; type them again.")
    else:
        try:
            account = accounts.bootstrap_admin(workspace, name, password)
        except AccountError as exc:
            st.error(str(exc))
        else:
            _sign_in(account)
            st.rerun()


def _change_password_box(user: User) -> None:
    with (
        st.popover("Change password", icon=":material/key:"),
        st.form("auth_change_password", clear_on_submit=True),
    ):
        current = st.text_input("Current password", type="password")
        new = st.text_input("New password", type="password")
        repeat = st.text_input("Repeat the new password", type="password")
        if not st.form_submit_button("Change password"):
            return
        workspace = _workspace()
        try:
            accounts.authenticate(workspace, user.name, current)
        except SignInError:
            _failed_attempt()
            st.error("The current password is wrong.")
            return
        if new != repeat:
            st.error("The two new passwords differ; type them again.")
            return
        try:
            accounts.set_password(workspace, user, user.name, new)
        except AccountError as exc:
            st.error(str(exc))
            return
        account = accounts.get_account(workspace, user.name)
        if account is not None:
            _sign_in(account)  # this session stays; every other one of this account ends
            _store_cookie(st.session_state.pop(_COOKIE_TO_SET), session_token.DEFAULT_LIFETIME_S)
        st.success("Password changed. Every other browser signed in as you is signed out.")


# ------------------------------------------------------------------ stay signed in
def _secret() -> bytes:
    return session_token.server_secret(workspace_root())


def _restore_from_cookie() -> None:
    """Sign this session in from the browser's cookie (a reload, a new tab), if valid: the
    account exists, is enabled, its password has not changed since the cookie and the
    cookie's server-side session has not ended (``auth.signin``)."""
    if st.session_state.get(_SIGNED_IN_KEY) or st.session_state.get(_SIGNED_OUT):
        return
    token = st.context.cookies.get(session_token.COOKIE_NAME)
    if not token:
        return
    signed = signin.account_for_cookie(_workspace(), token, _secret())
    if signed is not None:
        _remember(signed.account, signed.session)


def _store_cookie(token: str, max_age_s: int) -> None:
    """Set (or, with max_age 0, delete) the cookie; the token holds only [A-Za-z0-9._-].

    Set from JavaScript, so it cannot be HttpOnly: Streamlit 1.67 gives a script no way
    to add a Set-Cookie header (``st.context.cookies`` only reads; only its own OIDC
    routes set cookies). The protection is revocation instead: the cookie counts only
    while its server-side session lives (``auth.sessions``), and SameSite=Strict keeps
    other sites' requests from carrying it."""
    if not re.fullmatch(r"[A-Za-z0-9._-]*", token):
        raise ValueError("a session token holds only letters, digits, '.', '_' and '-'")
    name = session_token.COOKIE_NAME
    st.html(
        "<script>document.cookie = "
        f"'{name}={token}; Max-Age={int(max_age_s)}; Path=/; SameSite=Strict'"
        " + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
    )


# ----------------------------------------------------------------------------- admins
def sessions_section(me: User, name: str) -> None:
    """An admin's view of ``name``'s signed-in browsers, each with a button to end it."""
    if not me.is_admin:
        return
    workspace = _workspace()
    live = sessions.list_sessions(workspace, name)
    st.markdown(f"**Signed-in browsers of {name}** ({len(live)})")
    if not live:
        st.caption("None: nobody is signed in with this account's cookie.")
        return
    for session in live:
        with st.container(horizontal=True, vertical_alignment="center"):
            st.text(
                f"since {session.created_at[:16].replace('T', ' ')} UTC · last seen "
                f"{session.last_seen_at[:16].replace('T', ' ')} · "
                f"{session.label[:60] or 'unknown browser'}"
            )
            if st.button("End", key=f"admin_end_session_{session.id}", icon=":material/logout:"):
                sessions.end(workspace, name, session.id)
                audit.record(workspace, me.name, "end session", "user", name, session.id)
                st.rerun()
    if st.button("End all", key="admin_end_all_sessions", icon=":material/logout:"):
        ended = sessions.end_all(workspace, name)
        audit.record(workspace, me.name, "end sessions", "user", name, f"{ended} ended")
        st.rerun()
