"""The Users page (views/admin.py): admins manage accounts; everybody else is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from finetune_core.auth import accounts, audit
from finetune_core.jobs.slots import read_slots
from finetune_core.store import Workspace

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "views" / "admin.py")
ACCESS_ENV = ("FINETUNE_PASSWORD", "FINETUNE_PASSWORD_SHA256", "FINETUNE_ADMINS",
              "FINETUNE_TRUSTED_HEADER", "FINETUNE_TRUSTED_PROXIES")  # fmt: skip
ROOT_PW, BOB_PW = "root password 1", "bob password 1"


@pytest.fixture
def team(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    for name in ACCESS_ENV:
        monkeypatch.delenv(name, raising=False)
    root = accounts.bootstrap_admin(workspace, "root", ROOT_PW)
    accounts.create_account(workspace, root.user(), "bob", BOB_PW)
    return workspace


def signed_in_page(name: str, password: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=30)
    at.secrets = {"unrelated": "value"}
    at.run()
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    return at.button[0].click().run()


def test_a_non_admin_is_refused(team: Workspace) -> None:
    at = signed_in_page("bob", BOB_PW)
    assert not at.exception
    assert [e.value for e in at.error] == [
        "This page is for admins. Ask an admin if you need an account changed."
    ]
    assert [t.value for t in at.title] == ["Users"]
    assert not at.dataframe and not at.text_input  # nothing of the page behind the refusal


def test_an_admin_creates_disables_and_resets(team: Workspace) -> None:
    at = signed_in_page("root", ROOT_PW)
    assert not at.exception and not at.error
    at.text_input(key="admin_new_name").input("carol")
    at.text_input(key="admin_new_password").input("carol password")
    at.button(key="FormSubmitter:admin_create_user-Create user").click().run()
    assert [s.value for s in at.success] == ["Created carol."]
    assert accounts.authenticate(team, "carol", "carol password").is_admin is False

    at.selectbox(key="admin_user").select("carol").run()
    at.button(key="admin_toggle_disabled").click().run()
    assert accounts.get_account(team, "carol").disabled is True
    at.text_input(key="admin_reset_pw").input("a new carol password")
    at.button(key="FormSubmitter:admin_reset_password-Reset password").click().run()
    assert "Password of carol reset" in at.success[0].value
    assert accounts.password_matches(
        "a new carol password", accounts.get_account(team, "carol").password_hash
    )

    at.number_input(key="admin_cpu_slots").set_value(2)
    at.button(key="FormSubmitter:admin_slots-Save slots").click().run()
    assert read_slots(team).cpu == 2
    assert [(e.actor, e.action, e.target_id) for e in audit.entries(team)][:4] == [
        ("root", "set slots", "slots"),
        ("root", "set password", "carol"),
        ("root", "disable user", "carol"),
        ("root", "create user", "carol"),
    ]
    log = at.dataframe[-1].value  # the audit log, below the users table
    assert list(log["Action"][:2]) == ["set slots", "set password"]
