"""Per-user accounts: scrypt hashes, sign-in rules, admin-only changes, session material."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest

from finetune_core.auth import accounts, audit
from finetune_core.auth.access import PermissionDenied, User
from finetune_core.auth.accounts import (
    MIN_PASSWORD_CHARS,
    WRONG_CREDENTIALS,
    AccountError,
    SignInError,
    authenticate,
    bootstrap_admin,
    create_account,
    get_account,
    hash_password,
    list_accounts,
    password_matches,
    session_material,
    set_admin,
    set_disabled,
    set_password,
)
from finetune_core.auth.session_token import issue_token, verify_token
from finetune_core.store import Workspace

ROOT_PW = "root password 1"
ANN_PW = "ann's long password"
BOB_PW = "bob's other password"


@pytest.fixture
def team(workspace: Workspace) -> Workspace:
    """A workspace with an admin (root) and two users (ann, bob)."""
    root = bootstrap_admin(workspace, "root", ROOT_PW, by="cli:ops")
    create_account(workspace, root.user(), "Ann", ANN_PW)
    create_account(workspace, root.user(), "bob", BOB_PW)
    return workspace


def test_hash_format_and_a_salt_per_password() -> None:
    first, second = hash_password("same password"), hash_password("same password")
    kind, n, r, p, salt, digest = first.split("$")
    assert (kind, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    expected = hashlib.scrypt(b"same password", salt=base64.b64decode(salt), n=16384, r=8, p=1,
                              dklen=32)  # fmt: skip
    assert base64.b64decode(digest) == expected  # really scrypt over that salt
    assert first != second and first.split("$")[4] != second.split("$")[4]
    assert hashlib.sha256(b"same password").hexdigest() not in first
    assert password_matches("same password", first) and password_matches("same password", second)
    assert not password_matches("same password ", first)
    for broken in ["", "scrypt$16384$8$1$!!$!!", first.replace("scrypt", "md5"),
                   first.replace("$16384$", "$3$"), first.replace("$16384$", "$1099511627776$")]:  # fmt: skip
        assert not password_matches("same password", broken)


def test_two_users_with_the_same_password_get_different_hashes(workspace: Workspace) -> None:
    root = bootstrap_admin(workspace, "root", ROOT_PW)
    create_account(workspace, root.user(), "ann", "shared password!")
    create_account(workspace, root.user(), "bob", "shared password!")
    rows = dict(workspace.read().execute("SELECT name, password_hash FROM users").fetchall())
    assert rows["ann"] != rows["bob"]
    assert all(h.startswith("scrypt$16384$8$1$") for h in rows.values())
    assert "shared password!" not in "".join(rows.values())


def test_a_user_signs_in_only_with_their_own_password(team: Workspace) -> None:
    assert authenticate(team, "ann", ANN_PW).name == "Ann"
    assert authenticate(team, "  ANN ", ANN_PW).name == "Ann"  # one identity, however typed
    with pytest.raises(SignInError) as as_ann_with_bobs:
        authenticate(team, "ann", BOB_PW)
    with pytest.raises(SignInError) as nobody:
        authenticate(team, "carol", ANN_PW)
    with pytest.raises(SignInError) as empty:
        authenticate(team, "", "")
    # a wrong password and an unknown name read the same
    assert str(as_ann_with_bobs.value) == str(nobody.value) == str(empty.value) == WRONG_CREDENTIALS
    assert authenticate(team, "root", ROOT_PW).is_admin
    assert not authenticate(team, "bob", BOB_PW).is_admin


@pytest.mark.parametrize("password", ["", ROOT_PW, ANN_PW, "admin"])
def test_admin_typed_as_a_name_gives_nothing(team: Workspace, password: str) -> None:
    with pytest.raises(SignInError, match="Wrong name or password"):
        authenticate(team, "admin", password)


def test_an_unknown_name_costs_one_scrypt_like_a_known_one(
    team: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts._dummy_hash()  # made once per process, before the counting starts
    calls: list[int] = []
    real = hashlib.scrypt

    def counting(*args, **kwargs):
        calls.append(kwargs["n"])
        return real(*args, **kwargs)

    monkeypatch.setattr(accounts.hashlib, "scrypt", counting)
    for name, password in [("ann", "wrong password"), ("nobody", "wrong password"),
                           ("ann", ANN_PW), ("", "x")]:  # fmt: skip
        calls.clear()
        with contextlib.suppress(SignInError):
            authenticate(team, name, password)
        assert calls == [16384], (name, calls)


def test_a_disabled_user_is_refused_and_can_be_enabled(team: Workspace) -> None:
    root = get_account(team, "root").user()
    set_disabled(team, root, "ann", True)
    with pytest.raises(SignInError, match="disabled; ask an admin"):
        authenticate(team, "ann", ANN_PW)
    with pytest.raises(SignInError, match=WRONG_CREDENTIALS):  # no hint without the password
        authenticate(team, "ann", "not the password")
    set_disabled(team, root, "ann", False)
    assert authenticate(team, "ann", ANN_PW).name == "Ann"


def test_only_admins_change_accounts_and_nothing_changes_otherwise(team: Workspace) -> None:
    bob = get_account(team, "bob").user()
    before = list_accounts(team)
    with pytest.raises(PermissionDenied, match="Only an admin can create accounts"):
        create_account(team, bob, "mallory", "mallory's password")
    with pytest.raises(PermissionDenied):
        set_password(team, bob, "ann", "bob chose this one")
    with pytest.raises(PermissionDenied):
        set_disabled(team, bob, "ann", True)
    with pytest.raises(PermissionDenied):
        set_admin(team, bob, "bob", True)
    assert list_accounts(team) == before
    set_password(team, bob, "BOB", "bob's new password")  # one's own password: allowed
    assert authenticate(team, "bob", "bob's new password").name == "bob"


def test_names_and_passwords_are_checked(team: Workspace) -> None:
    root = get_account(team, "root").user()
    cases = [
        ("  ANN  ", "There is already an account named 'Ann'"),
        ("\uff21\uff4e\uff4e", "There is already an account named 'Ann'"),  # full-width
        ("an\u200bn", "invisible characters"),
        ("anonymous", "reserved"),
        ("cli:root", "reserved"),
        ("", "cannot be empty"),
        ("x" * 201, "at most 200"),
        ("bad\u202ename", "control characters"),
    ]
    for name, message in cases:
        with pytest.raises(AccountError, match=message):
            create_account(team, root, name, "a long enough password")
    with pytest.raises(AccountError, match=f"at least {MIN_PASSWORD_CHARS} characters"):
        create_account(team, root, "dana", "short")
    assert [a.name for a in list_accounts(team)] == ["Ann", "bob", "root"]


def test_first_account_bootstrap_rules(workspace: Workspace) -> None:
    nobody = User("someone", is_admin=True)
    with pytest.raises(AccountError, match="first account must be an admin"):
        create_account(workspace, nobody, "ann", ANN_PW)
    first = bootstrap_admin(workspace, "root", ROOT_PW, by="cli:ops")
    assert (first.is_admin, first.created_by) == (True, "cli:ops")
    with pytest.raises(AccountError, match="already has accounts"):
        bootstrap_admin(workspace, "mallory", "mallory's password")
    assert [a.name for a in list_accounts(workspace)] == ["root"]
    assert "password_hash" not in repr(first) and ROOT_PW not in repr(first)


def test_the_last_admin_stays(team: Workspace) -> None:
    root = get_account(team, "root").user()
    with pytest.raises(AccountError, match="last enabled admin"):
        set_disabled(team, root, "root", True)
    with pytest.raises(AccountError, match="last enabled admin"):
        set_admin(team, root, "root", False)
    set_admin(team, root, "ann", True)
    set_admin(team, root, "root", False)
    assert [a.name for a in list_accounts(team) if a.is_admin] == ["Ann"]


def test_an_old_cookie_stops_working_after_a_password_change(team: Workspace) -> None:
    secret = b"s" * 32
    ann = get_account(team, "ann")
    token = issue_token(ann.name, secret, session_material(ann))
    assert verify_token(token, secret, session_material(get_account(team, "ann"))) == "Ann"
    set_password(team, get_account(team, "root").user(), "ann", "a reset password")
    assert verify_token(token, secret, session_material(get_account(team, "ann"))) is None
    # another account's material never verifies ann's token
    assert verify_token(token, secret, session_material(get_account(team, "bob"))) is None


def test_account_changes_are_audited(team: Workspace) -> None:
    root = get_account(team, "root").user()
    set_disabled(team, root, "bob", True)
    log = [(e.actor, e.action, e.target_kind, e.target_id, e.detail) for e in audit.entries(team)]
    assert log == [
        ("root", "disable user", "user", "bob", ""),
        ("root", "create user", "user", "bob", ""),
        ("root", "create user", "user", "Ann", ""),
        ("cli:ops", "create user", "user", "root", "admin"),
    ]
