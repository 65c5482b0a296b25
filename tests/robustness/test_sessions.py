"""Issue 15 item 9: signing out revokes the session; a copied cookie stops working.

v1's cookie was a signed name and expiry only: a copy taken before sign-out kept signing
in for 7 days. Now each cookie names a server-side session (``auth.sessions``, rows in
the workspace's ``settings`` table) and counts only while that session lives. The
reproduction is a copied cookie after sign-out; the class is every way a session ends
(sign-out, own password change, admin reset, disabling, an admin ending one or all,
expiry), each refusing the copy while unrelated sessions keep working.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from finetune_core.auth import accounts, sessions
from finetune_core.auth.accounts import get_account, session_material
from finetune_core.auth.session_token import issue_token, verify_token
from finetune_core.auth.signin import account_for_cookie, issue_cookie, sign_out
from finetune_core.store import Workspace

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"k" * 32
ROOT_PW, ANN_PW, BOB_PW = "root password 1", "ann password 1", "bob password 1"
ACCESS_ENV = ("FINETUNE_PASSWORD", "FINETUNE_PASSWORD_SHA256", "FINETUNE_ADMINS",
              "FINETUNE_TRUSTED_HEADER", "FINETUNE_TRUSTED_PROXIES")  # fmt: skip


@pytest.fixture
def team(workspace: Workspace) -> Workspace:
    root = accounts.bootstrap_admin(workspace, "root", ROOT_PW)
    accounts.create_account(workspace, root.user(), "ann", ANN_PW)
    accounts.create_account(workspace, root.user(), "bob", BOB_PW)
    return workspace


def cookie(ws: Workspace, name: str, **kw: object) -> tuple[str, str]:
    account = get_account(ws, name)
    assert account is not None
    return issue_cookie(ws, account, SECRET, **kw)  # type: ignore[arg-type]


def who(ws: Workspace, token: str, **kw: object) -> str | None:
    signed = account_for_cookie(ws, token, SECRET, **kw)  # type: ignore[arg-type]
    return signed.account.name if signed else None


def test_a_cookie_copied_before_sign_out_is_refused_after_it(team: Workspace) -> None:
    token, session = cookie(team, "ann")
    copied = str(token)  # what an attacker lifted from the browser
    assert who(team, copied) == "ann"
    assert sign_out(team, "ann", session) is True
    assert who(team, copied) is None
    # v1's whole check (signature and expiry) still passes: the revocation is what refuses
    assert verify_token(copied, SECRET, session_material(get_account(team, "ann"))) == "ann"
    assert sessions.list_sessions(team, "ann") == []


def _root(ws: Workspace):  # noqa: ANN202 - a User
    account = get_account(ws, "root")
    assert account is not None
    return account.user()


ENDINGS: dict[str, Callable[[Workspace, str], None]] = {
    "sign-out": lambda ws, sid: None if sign_out(ws, "ann", sid) else pytest.fail("not live"),
    "own password change": lambda ws, sid: accounts.set_password(
        ws, get_account(ws, "ann").user(), "ann", "ann's new password"
    ),
    "admin resets the password": lambda ws, sid: accounts.set_password(
        ws, _root(ws), "ann", "a reset password"
    ),
    "admin disables the account": lambda ws, sid: accounts.set_disabled(ws, _root(ws), "ann", True),
    "admin ends this session": lambda ws, sid: (
        None if sessions.end(ws, "ANN ", sessions.public_id(sid)) else pytest.fail("not ended")
    ),
    "admin ends all sessions": lambda ws, sid: (
        None if sessions.end_all(ws, "ann") else pytest.fail()
    ),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_way_a_session_ends_refuses_its_copied_cookie(team: Workspace, ending: str) -> None:
    token, session = cookie(team, "ann")
    other_ann, _ = cookie(team, "ann")  # a second browser of ann's
    bobs, _ = cookie(team, "bob")
    assert who(team, token) == who(team, other_ann) == "ann"
    ENDINGS[ending](team, session)
    assert who(team, token) is None
    whole_account = ending not in ("sign-out", "admin ends this session")
    assert who(team, other_ann) == (None if whole_account else "ann")
    assert who(team, bobs) == "bob"  # nobody else is signed out


def test_expired_forged_and_sessionless_cookies_are_refused(team: Workspace) -> None:
    token, session = cookie(team, "ann", lifetime_s=60, now=1_000_000)
    assert who(team, token, now=1_000_030) == "ann"
    assert who(team, token, now=1_000_061) is None  # expired: cookie and session together
    ann = get_account(team, "ann")
    material = session_material(ann)
    v1_style = issue_token("ann", SECRET, material)  # names no session
    made_up = issue_token("ann", SECRET, material, session="x" * 32)  # a session never started
    bob_session = cookie(team, "bob")[1]
    borrowed = issue_token("ann", SECRET, material, session=bob_session)  # another's session
    for bad in (v1_style, made_up, borrowed, "", "a.b.c", token + "x"):
        assert who(team, bad) is None, bad


def test_the_table_holds_no_working_cookie_and_stays_bounded(team: Workspace) -> None:
    made = [cookie(team, "ann", now=1_000_000 + i) for i in range(sessions.MAX_SESSIONS + 5)]
    stored = "".join(
        row[0] for row in team.read().execute("SELECT value FROM settings WHERE key LIKE 'sess%'")
    )
    assert all(sid not in stored for _, sid in made)  # only hashes are kept
    listed = sessions.list_sessions(team, "ann", now=1_000_100)
    assert len(listed) == sessions.MAX_SESSIONS
    assert who(team, made[0][0], now=1_000_100) is None  # the oldest went first
    assert who(team, made[-1][0], now=1_000_100) == "ann"


def test_sessions_started_at_once_are_all_recorded(team: Workspace) -> None:
    tokens: list[str] = []
    lock = threading.Lock()

    def start() -> None:
        token, _ = cookie(team, "bob")
        with lock:
            tokens.append(token)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sessions.list_sessions(team, "bob")) == 8
    assert all(who(team, t) == "bob" for t in tokens)


# ------------------------------------------------------------------ in the app (AppTest)
def gated_app() -> None:
    import streamlit as st

    from ui.auth import require_login, sidebar_user_box

    user = require_login()
    sidebar_user_box(user)
    st.write(f"SECRET PAGE user={user.name}")


@pytest.fixture
def app(team: Workspace, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.syspath_prepend(str(ROOT))
    for name in ACCESS_ENV:
        monkeypatch.delenv(name, raising=False)
    at = AppTest.from_function(gated_app, default_timeout=15)
    at.secrets = {"unrelated": "value"}
    at.run()
    at.text_input[0].input("ann")
    at.text_input[1].input(ANN_PW)
    return at.button[0].click().run()


def page(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_sign_out_in_the_app_ends_the_session_server_side(app: AppTest, team: Workspace) -> None:
    assert "SECRET PAGE user=ann" in page(app)
    live = sessions.list_sessions(team, "ann")
    assert len(live) == 1
    app.button(key="auth_sign_out").click().run()
    assert "SECRET PAGE" not in page(app)
    assert sessions.list_sessions(team, "ann") == []  # a copy of its cookie now signs nobody in


def test_an_admin_ending_a_session_signs_the_open_tab_out(app: AppTest, team: Workspace) -> None:
    assert "SECRET PAGE user=ann" in page(app)
    (live,) = sessions.list_sessions(team, "ann")
    assert sessions.end(team, "ann", live.id)
    app.run()  # the tab's next rerun
    assert "SECRET PAGE" not in page(app)
    assert [t.label for t in app.text_input] == ["Your name", "Password"]


def test_the_users_page_lists_and_ends_a_users_sessions(
    team: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    for name in ACCESS_ENV:
        monkeypatch.delenv(name, raising=False)
    ann_cookie, _ = cookie(team, "ann", label="Firefox on Linux")
    at = AppTest.from_file(str(ROOT / "views" / "admin.py"), default_timeout=30)
    at.secrets = {"unrelated": "value"}
    at.run()
    at.text_input[0].input("root")
    at.text_input[1].input(ROOT_PW)
    at.button[0].click().run()
    at.selectbox(key="admin_user").select("ann").run()
    assert not at.exception
    (live,) = sessions.list_sessions(team, "ann")
    assert any("Firefox on Linux" in t.value for t in at.text)
    at.button(key=f"admin_end_session_{live.id}").click().run()
    assert who(team, ann_cookie) is None
    assert sessions.list_sessions(team, "ann") == []
    assert any("None: nobody is signed in" in c.value for c in at.caption)
