"""Sign-in before any page renders, and who is signed in.

``app.py`` calls :func:`require_login` before ``st.navigation(...).run()``; pages call
:func:`current_user`. The rules themselves live in ``finetune_core.auth.access``.
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

from finetune_core.auth import session_token
from finetune_core.auth.access import (
    AccessConfigError,
    AccessSettings,
    User,
    check_password,
    load_access_settings,
    make_user,
)
from ui.settings import workspace_root

FAILED_DELAY_S = 1.0  # wait after a wrong password, times the session's failures so far
MAX_DELAY_S = 8.0
NAME_KEY = "user_name"  # open mode: the name typed in the sidebar
_SIGNED_IN_KEY = "auth_user"  # password mode: the name given with the right password
_FAILURES_KEY = "auth_failures"
_COOKIE_TO_SET = "auth_cookie_to_set"  # a fresh token the browser has not stored yet
_SIGNED_OUT = "auth_signed_out"  # this tab signed out: ignore (and clear) its cookie
# Wrong attempts wait one after another, so parallel sessions cannot guess faster.
_FAILURE_LOCK = threading.Lock()


def access_settings() -> AccessSettings:
    """The server's access settings: environment, then ``.streamlit/secrets.toml``."""
    return load_access_settings(_secrets(), os.environ)


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
    if settings.auth_mode == "password":
        _restore_from_cookie(settings)
        return make_user(settings, str(st.session_state.get(_SIGNED_IN_KEY, "")))
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
        token = st.session_state.pop(_COOKIE_TO_SET, None)
        if token:
            _store_cookie(token, session_token.DEFAULT_LIFETIME_S)
        if st.button("Sign out", icon=":material/logout:", key="auth_sign_out"):
            if settings.auth_mode == "oidc":
                st.logout()
            else:
                st.session_state.pop(_SIGNED_IN_KEY, None)
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


# ----------------------------------------------------------------------------- password
def _password_login(settings: AccessSettings) -> User:
    name = str(st.session_state.get(_SIGNED_IN_KEY, ""))
    if name:
        return make_user(settings, name)
    if st.session_state.get(_SIGNED_OUT):
        _store_cookie("", 0)  # forget this browser's stay-signed-in cookie
    st.title("Finetune Dashboard")
    with st.form("finetune_login", clear_on_submit=True):
        typed_name = st.text_input("Your name", max_chars=60, placeholder="shown on your runs")
        typed_password = st.text_input("Access password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        if not typed_name.strip():
            st.error("Type your name: it is recorded on the datasets and runs you create.")
        elif check_password(settings, typed_password):
            name = " ".join(typed_name.split())
            st.session_state[_SIGNED_IN_KEY] = name
            st.session_state.pop(_FAILURES_KEY, None)
            st.session_state.pop(_SIGNED_OUT, None)
            st.session_state[_COOKIE_TO_SET] = session_token.issue_token(
                name, _secret(), _password_material(settings)
            )
            st.rerun()
        else:
            failures = int(st.session_state.get(_FAILURES_KEY, 0)) + 1
            st.session_state[_FAILURES_KEY] = failures
            with _FAILURE_LOCK:
                time.sleep(min(FAILED_DELAY_S * failures, MAX_DELAY_S))
            st.error("Wrong password. Ask whoever runs this server for the team's password.")
    st.stop()


# ------------------------------------------------------------------ stay signed in
def _secret() -> bytes:

    return session_token.server_secret(workspace_root())


def _password_material(settings: AccessSettings) -> str:
    return f"{settings.password}\0{settings.password_sha256}"


def _restore_from_cookie(settings: AccessSettings) -> None:
    """Sign this session in from the browser's cookie (a reload, a new tab), if valid."""
    if st.session_state.get(_SIGNED_IN_KEY) or st.session_state.get(_SIGNED_OUT):
        return
    token = st.context.cookies.get(session_token.COOKIE_NAME)
    if not token:
        return
    name = session_token.verify_token(token, _secret(), _password_material(settings))
    if name:
        st.session_state[_SIGNED_IN_KEY] = name


def _store_cookie(token: str, max_age_s: int) -> None:
    """Set (or, with max_age 0, delete) the cookie; the token holds only [A-Za-z0-9._-]."""
    if not re.fullmatch(r"[A-Za-z0-9._-]*", token):
        raise ValueError("a session token holds only letters, digits, '.', '_' and '-'")
    name = session_token.COOKIE_NAME
    st.html(
        "<script>document.cookie = "
        f"'{name}={token}; Max-Age={int(max_age_s)}; Path=/; SameSite=Strict'"
        " + (location.protocol === 'https:' ? '; Secure' : '');</script>",
        unsafe_allow_javascript=True,
    )
