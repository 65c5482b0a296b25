"""The sign-in gate in a real Streamlit script run (AppTest): nothing renders before it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from streamlit.proto.TextInput_pb2 import TextInput as TextInputProto
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
ACCESS_ENV = (
    "FINETUNE_PASSWORD",
    "FINETUNE_PASSWORD_SHA256",
    "FINETUNE_ADMINS",
    "FINETUNE_ALLOW_SERVER_PATHS",
    "FINETUNE_ALLOW_CUSTOM_BACKBONES",
    "FINETUNE_ALLOW_CUSTOM_BACKBONE",
)
# AppTest only swaps st.secrets for a non-empty dict; this one keeps a developer's own
# secrets.toml out of the tests.
NO_SECRETS = {"unrelated": "value"}


def gated_app() -> None:
    import streamlit as st

    from ui.auth import require_login, sidebar_user_box

    user = require_login()
    sidebar_user_box(user)
    st.write("SECRET PAGE")
    st.write(f"user={user.name} admin={user.is_admin}")


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.syspath_prepend(str(ROOT))
    for name in ACCESS_ENV:
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_function(gated_app, default_timeout=15)
    at.secrets = dict(NO_SECRETS)
    return at


def page_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    return at.button[0].click().run()


def test_password_gate_blocks_until_the_right_password(
    app: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_PASSWORD", "open sesame")
    app.run()
    assert not app.exception
    assert "SECRET PAGE" not in page_text(app)
    assert [t.label for t in app.text_input] == ["Your name", "Access password"]
    assert app.text_input[1].proto.type == TextInputProto.Type.PASSWORD

    sign_in(app, "ann", "open sesam")
    assert "SECRET PAGE" not in page_text(app)
    assert [e.value for e in app.error] == [
        "Wrong password. Ask whoever runs this server for the team's password."
    ]
    shown = page_text(app) + "".join(e.value for e in app.error)
    assert "open sesam" not in shown  # the typed password is never echoed back
    assert app.session_state["auth_failures"] == 1

    sign_in(app, "ann", "open sesame")
    assert not app.exception
    assert "SECRET PAGE" in page_text(app)
    assert "user=ann admin=False" in page_text(app)
    assert not app.error
    assert [t.label for t in app.text_input] == []  # the form is gone

    app.button(key="auth_sign_out").click().run()  # sign out: back to the form
    assert "SECRET PAGE" not in page_text(app)
    assert [t.label for t in app.text_input] == ["Your name", "Access password"]


def test_name_is_required(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_PASSWORD", "pw")
    app.run()
    sign_in(app, "  ", "pw")
    assert "SECRET PAGE" not in page_text(app)
    assert "Type your name" in app.error[0].value


def test_hashed_password_from_secrets_and_admin(app: AppTest) -> None:
    app.secrets = {
        "access": {
            "password_sha256": hashlib.sha256(b"team-pass").hexdigest(),
            "admins": ["Boss"],
        }
    }
    app.run()
    assert "SECRET PAGE" not in page_text(app)
    sign_in(app, "boss", "team-pass")
    assert "user=boss admin=True" in page_text(app)
    sidebar = [m.value for m in app.sidebar.markdown]
    assert "Signed in as boss" in "".join(t.value for t in app.sidebar.text)
    assert any("admin" in value for value in sidebar)


def test_open_mode_shows_the_page_directly(app: AppTest) -> None:
    app.run()
    assert not app.exception
    assert "SECRET PAGE" in page_text(app)
    assert "user=anonymous admin=True" in page_text(app)
    app.sidebar.text_input(key="user_name").input("Dana").run()
    assert "user=Dana admin=True" in page_text(app)


def test_oidc_mode_needs_a_provider_sign_in(app: AppTest) -> None:
    app.secrets = {
        "auth": {
            "redirect_uri": "http://localhost:8501/oauth2callback",
            "cookie_secret": "x" * 32,
            "client_id": "id",
            "client_secret": "secret",
            "server_metadata_url": "https://example.com/.well-known/openid-configuration",
        },
        "access": {"admins": ["boss@x.com"], "password": "ignored in oidc mode"},
    }
    app.user = {"is_logged_in": False}
    app.run()
    assert "SECRET PAGE" not in page_text(app)
    assert [b.label for b in app.button] == ["Sign in"]
    assert not app.text_input  # no password form in OIDC mode

    app.user = {"is_logged_in": True, "email": "boss@x.com", "name": "The Boss"}
    app.run()
    assert "user=boss@x.com admin=True" in page_text(app)
    app.user = {"is_logged_in": True, "email": "boss@x.com", "email_verified": False}
    app.run()
    assert "user=boss@x.com admin=False" in page_text(app)


def test_unreadable_settings_keep_the_app_closed(
    app: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_PASSWORD_SHA256", "not-a-hash")
    app.run()
    assert "SECRET PAGE" not in page_text(app)
    assert "64 hexadecimal" in app.error[0].value


def app_page_scripts(root: Path) -> list[str]:
    """Every page script of the real app: those app.py registers, and anything in pages/
    (Streamlit serves a ``pages/`` folder next to the main script on its own)."""
    source = (root / "app.py").read_text(encoding="utf-8")
    listed = set(re.findall(r"st\.Page\(\s*[\"']([^\"']+\.py)[\"']", source))
    folder = {f"pages/{p.name}" for p in (root / "pages").glob("*.py")}
    return sorted(listed | folder)


def pages_reached_without_sign_in(root: Path) -> list[str]:
    """Open each page of the app at ``root`` on a fresh server without signing in; return
    those that render anything other than the sign-in screen."""
    first = AppTest.from_file(str(root / "app.py"), default_timeout=60)
    first.secrets = dict(NO_SECRETS)
    first.run()
    assert not first.exception
    assert any(t.proto.type == TextInputProto.Type.PASSWORD for t in first.text_input)
    sign_in_screen = (repr(first.main), repr(first.sidebar))
    reached = []
    for page in app_page_scripts(root):
        # Every AppTest run starts like a freshly started server.
        at = AppTest.from_file(str(root / "app.py"), default_timeout=60)
        at.secrets = dict(NO_SECRETS)
        at.switch_page(page).run()
        if at.exception or (repr(at.main), repr(at.sidebar)) != sign_in_screen:
            reached.append(page)
    return reached


def test_no_page_of_the_real_app_renders_before_sign_in(
    workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A visitor who opens a page's URL directly on a freshly started server must see the
    sign-in form, not the page. (With a ``pages/`` folder next to app.py, Streamlit runs
    ``pages/x.py`` on its own, without app.py, until some session calls st.navigation.)"""
    monkeypatch.syspath_prepend(str(ROOT))
    for name in ACCESS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FINETUNE_PASSWORD", "pw")
    # the root cause: Streamlit auto-serves a folder named pages/ beside the main script
    assert not (ROOT / "pages").exists(), "page scripts must live in views/, not pages/"
    assert app_page_scripts(ROOT)
    assert pages_reached_without_sign_in(ROOT) == []
