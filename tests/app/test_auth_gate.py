"""The sign-in gate in a real Streamlit script run (AppTest): nothing renders before it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from streamlit.proto.TextInput_pb2 import TextInput as TextInputProto
from streamlit.testing.v1 import AppTest

from finetune_core.auth import accounts
from finetune_core.store import Workspace

ROOT = Path(__file__).resolve().parents[2]
ACCESS_ENV = (
    "FINETUNE_PASSWORD",
    "FINETUNE_PASSWORD_SHA256",
    "FINETUNE_ADMINS",
    "FINETUNE_ALLOW_SERVER_PATHS",
    "FINETUNE_ALLOW_CUSTOM_BACKBONES",
    "FINETUNE_ALLOW_CUSTOM_BACKBONE",
    "FINETUNE_TRUSTED_HEADER",
    "FINETUNE_TRUSTED_PROXIES",
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
def app(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> AppTest:
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


ANN_PW = "ann's own password"
BOB_PW = "bob's own password"
ROOT_PW = "the root password"


@pytest.fixture
def team(workspace: Workspace) -> Workspace:
    """Accounts root (admin), ann and bob in the workspace the app opens."""
    root = accounts.bootstrap_admin(workspace, "root", ROOT_PW)
    accounts.create_account(workspace, root.user(), "ann", ANN_PW)
    accounts.create_account(workspace, root.user(), "bob", BOB_PW)
    return workspace


def test_accounts_gate_needs_that_users_own_password(app: AppTest, team: Workspace) -> None:
    app.run()  # accounts exist: sign-in is on even with no password configured
    assert not app.exception
    assert "SECRET PAGE" not in page_text(app)
    assert [t.label for t in app.text_input] == ["Your name", "Password"]
    assert app.text_input[1].proto.type == TextInputProto.Type.PASSWORD

    for name, password in [("ann", BOB_PW), ("admin", ROOT_PW), ("admin", ANN_PW), ("x", "")]:
        sign_in(app, name, password)
        assert "SECRET PAGE" not in page_text(app)
        assert [e.value for e in app.error] == ["Wrong name or password."]
        assert BOB_PW not in page_text(app) + "".join(e.value for e in app.error)
    assert app.session_state["auth_failures"] == 4

    sign_in(app, " ANN ", ANN_PW)
    assert not app.exception
    assert "user=ann admin=False" in page_text(app)
    assert not app.error
    app.button(key="auth_sign_out").click().run()  # sign out: back to the form
    assert "SECRET PAGE" not in page_text(app)
    assert [t.label for t in app.text_input] == ["Your name", "Password"]

    sign_in(app, "root", ROOT_PW)  # admin rights come from the account
    assert "user=root admin=True" in page_text(app)
    assert "Signed in as root" in "".join(t.value for t in app.sidebar.text)


def test_a_shared_password_signs_nobody_in(
    app: AppTest, team: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_PASSWORD", "team password")
    monkeypatch.setenv("FINETUNE_ADMINS", "mallory")
    app.run()
    sign_in(app, "mallory", "team password")
    assert "SECRET PAGE" not in page_text(app)
    assert [e.value for e in app.error] == ["Wrong name or password."]


def test_disabling_or_a_new_password_ends_a_live_session(app: AppTest, team: Workspace) -> None:
    root = accounts.get_account(team, "root").user()
    app.run()
    sign_in(app, "ann", ANN_PW)
    assert "user=ann admin=False" in page_text(app)
    accounts.set_disabled(team, root, "ann", True)
    app.run()
    assert "SECRET PAGE" not in page_text(app)
    sign_in(app, "ann", ANN_PW)
    assert [e.value for e in app.error] == [
        "The account ann is disabled; ask an admin to enable it."
    ]

    sign_in(app, "bob", BOB_PW)
    assert "user=bob admin=False" in page_text(app)
    accounts.set_password(team, root, "bob", "a reset password")
    app.run()
    assert "SECRET PAGE" not in page_text(app)
    sign_in(app, "bob", "a reset password")
    assert "user=bob admin=False" in page_text(app)


def test_first_admin_needs_the_setup_password(
    app: AppTest, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_PASSWORD_SHA256", hashlib.sha256(b"setup secret").hexdigest())
    app.run()
    assert "SECRET PAGE" not in page_text(app)
    labels = ["Admin name", "New password", "Repeat the new password", "Setup password"]
    assert [t.label for t in app.text_input] == labels

    def create(name: str, password: str, repeat: str, setup: str) -> None:
        for field, value in zip(app.text_input, (name, password, repeat, setup), strict=True):
            field.input(value)
        app.button[0].click().run()

    create("boss", "boss password!", "boss password!", "wrong")
    assert "Wrong setup password" in app.error[0].value
    create("boss", "short", "short", "setup secret")
    assert "at least 10 characters" in app.error[0].value
    assert accounts.list_accounts(workspace) == []
    create("boss", "boss password!", "boss password!", "setup secret")
    assert "user=boss admin=True" in page_text(app)
    assert [(a.name, a.is_admin) for a in accounts.list_accounts(workspace)] == [("boss", True)]


def test_proxy_mode_refuses_requests_not_from_the_proxy(
    app: AppTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_TRUSTED_HEADER", "X-Forwarded-Email")
    monkeypatch.setenv("FINETUNE_TRUSTED_PROXIES", "10.0.0.5")
    app.run()  # AppTest has no client connection: not the proxy
    assert "SECRET PAGE" not in page_text(app)
    assert "Sign in through the organisation's sign-in proxy" in app.error[0].value
    assert not app.text_input  # no password form to try


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
