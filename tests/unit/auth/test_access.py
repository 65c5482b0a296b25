"""Access control at the core level: settings, permissions, gates, guarded actions."""

from __future__ import annotations

import hashlib

import pytest

from finetune_core.auth.access import (
    ANONYMOUS,
    AccessConfigError,
    AccessSettings,
    PermissionDenied,
    User,
    can_modify,
    can_start,
    can_view,
    check_custom_backbone_allowed,
    check_password,
    check_server_path_allowed,
    guarded_delete_dataset,
    guarded_delete_run,
    guarded_rename_dataset,
    guarded_rename_run,
    guarded_resume,
    guarded_stop,
    load_access_settings,
    make_user,
    public_error,
    require,
)
from finetune_core.jobs.manager import JobManager
from finetune_core.store import DatasetRecord, RunRecord, RunStatus, StoreError, Workspace

ALICE = User("alice@x.com")
BOB = User("bob@y.com")
ADMIN = User("root@x.com", is_admin=True)
OPEN = make_user(AccessSettings(auth_mode="open"), "")


# ----------------------------------------------------------------------------- settings
def test_defaults_are_open_and_locked_down() -> None:
    settings = load_access_settings(None, {})
    assert settings == AccessSettings(
        admins=frozenset(),
        allow_server_paths=False,
        allow_custom_backbones=False,
        auth_mode="open",
    )


def test_settings_from_environment() -> None:
    settings = load_access_settings(
        None,
        {
            "FINETUNE_ADMINS": " A@x.com, b@y.com ,,",
            "FINETUNE_ALLOW_SERVER_PATHS": "1",
            "FINETUNE_ALLOW_CUSTOM_BACKBONES": "true",
            "FINETUNE_PASSWORD": "s3cret",
        },
    )
    assert settings.admins == frozenset({"a@x.com", "b@y.com"})
    assert settings.allow_server_paths is True
    assert settings.allow_custom_backbones is True
    assert settings.auth_mode == "password"
    assert settings.password == "s3cret"


def test_settings_from_secrets_mapping() -> None:
    digest = hashlib.sha256(b"pw").hexdigest().upper()
    secrets = {
        "access": {
            "admins": ["Root@X.com"],
            "allow_server_paths": True,
            "allow_custom_backbones": False,
            "password_sha256": digest,
        }
    }
    settings = load_access_settings(secrets, {})
    assert settings.admins == frozenset({"root@x.com"})
    assert settings.allow_server_paths is True
    assert settings.allow_custom_backbones is False
    assert settings.auth_mode == "password"
    assert settings.password_sha256 == digest.lower()
    pasted = {"access": {"password_sha256": f"{digest}  -"}}  # a whole `sha256sum` line
    assert load_access_settings(pasted, {}).password_sha256 == digest.lower()
    assert settings.is_admin("ROOT@x.com ") and not settings.is_admin("bob")


def test_environment_overrides_secrets() -> None:
    secrets = {"access": {"allow_server_paths": True, "admins": ["a"], "password": "x"}}
    env = {"FINETUNE_ALLOW_SERVER_PATHS": "0", "FINETUNE_ADMINS": "b", "FINETUNE_PASSWORD": "y"}
    settings = load_access_settings(secrets, env)
    assert settings.allow_server_paths is False
    assert settings.admins == frozenset({"b"})
    assert settings.password == "y"


def test_empty_environment_variables_do_not_override_secrets() -> None:
    secrets = {"access": {"password": "pw", "allow_server_paths": True}}
    settings = load_access_settings(
        secrets, {"FINETUNE_PASSWORD": "", "FINETUNE_ALLOW_SERVER_PATHS": " "}
    )
    assert settings.auth_mode == "password"
    assert settings.allow_server_paths is True


def test_older_setting_names_still_work() -> None:
    # The first release read FINETUNE_* keys at the top of secrets.toml and a singular name.
    assert load_access_settings({"FINETUNE_PASSWORD": "pw"}, {}).auth_mode == "password"
    env = {"FINETUNE_ALLOW_CUSTOM_BACKBONE": "1"}
    assert load_access_settings(None, env).allow_custom_backbones is True


def test_auth_section_selects_oidc_even_with_a_password() -> None:
    secrets = {
        "auth": {"redirect_uri": "http://localhost:8501/oauth2callback", "client_id": "c"},
        "access": {"password": "pw"},
    }
    assert load_access_settings(secrets, {}).auth_mode == "oidc"


@pytest.mark.parametrize(
    ("secrets", "env", "fragment"),
    [
        (None, {"FINETUNE_ALLOW_SERVER_PATHS": "maybe"}, "FINETUNE_ALLOW_SERVER_PATHS"),
        ({"access": {"password_sha256": "abc"}}, {}, "64 hexadecimal"),
        ({"access": {"admins": 5}}, {}, "list of names"),
        ({"access": "pw"}, {}, "[access] must be a table"),
    ],
)
def test_bad_settings_say_what_is_wrong(secrets, env, fragment) -> None:
    with pytest.raises(AccessConfigError, match=fragment.replace("[", r"\[")):
        load_access_settings(secrets, env)


def test_password_never_in_repr() -> None:
    settings = load_access_settings(None, {"FINETUNE_PASSWORD": "hunter2-very-secret"})
    assert "hunter2" not in repr(settings)


def test_check_password_plain_and_hashed() -> None:
    plain = load_access_settings(None, {"FINETUNE_PASSWORD": "correct horse"})
    assert check_password(plain, "correct horse")
    assert not check_password(plain, "correct horse ")
    assert not check_password(plain, "")
    hashed = load_access_settings(
        None, {"FINETUNE_PASSWORD_SHA256": hashlib.sha256("pässword".encode()).hexdigest()}
    )
    assert check_password(hashed, "pässword")
    assert not check_password(hashed, "password")
    assert not check_password(AccessSettings(), "")  # no password configured: nothing matches


def test_make_user_per_mode() -> None:
    assert make_user(AccessSettings(auth_mode="open"), "  ") == User(ANONYMOUS, is_admin=True)
    assert make_user(AccessSettings(auth_mode="open"), " Ann  Lee ") == User("Ann Lee", True)
    for mode in ("oidc", "proxy"):  # verified identities: admins from the list
        settings = AccessSettings(admins=frozenset({"root@x.com"}), auth_mode=mode)
        assert make_user(settings, "Root@X.com") == User("Root@X.com", is_admin=True)
        assert make_user(settings, "bob") == User("bob", is_admin=False)
    # password mode: a typed name never earns admin rights (they come from the account)
    settings = AccessSettings(admins=frozenset({"root@x.com"}), auth_mode="password")
    assert make_user(settings, "root@x.com") == User("root@x.com", is_admin=False)


def test_identities_compare_normalised() -> None:
    settings = AccessSettings(admins=frozenset({"ann"}), auth_mode="oidc")
    assert settings.is_admin("  ANN  ") and settings.is_admin("\uff41\uff4e\uff4e")  # full-width
    assert not settings.is_admin("ann\u200b")  # a zero-width space is another name
    assert can_modify(User(" ＡＮＮ "), RunRecord(id="r", creator="ann"))


# ----------------------------------------------------------------------------- permissions
def _run(creator: str) -> RunRecord:
    return RunRecord(id="r-1", creator=creator, name="run")


@pytest.mark.parametrize(
    ("user", "creator", "allowed"),
    [
        (ALICE, "alice@x.com", True),  # creator
        (User("ALICE@x.com"), "alice@x.com", True),  # e-mail case does not matter
        (BOB, "alice@x.com", False),  # other user
        (ADMIN, "alice@x.com", True),  # admin
        (BOB, "", False),  # no recorded creator: admins only
        (ADMIN, "", True),
        (OPEN, "alice@x.com", True),  # open mode: everyone may
        (OPEN, "", True),
        (User(ANONYMOUS), "", True),  # the anonymous user owns anonymous records
        (User(""), "", False),  # nobody signed in
    ],
)
def test_can_modify_matrix(user: User, creator: str, allowed: bool) -> None:
    assert can_modify(user, _run(creator)) is allowed
    dataset = DatasetRecord(id="d-1", name="d", creator=creator)
    assert can_modify(user, dataset) is allowed


def test_view_and_start() -> None:
    for user in (ALICE, BOB, ADMIN, OPEN):
        assert can_view(user, _run("alice@x.com"))
        assert can_start(user)
    assert not can_start(User(""))


def test_require_messages() -> None:
    require(True, "stop", _run("alice"))
    with pytest.raises(PermissionDenied) as info:
        require(can_modify(BOB, _run("alice")), "stop", _run("alice"))
    assert str(info.value) == "Only alice or an admin can stop this run."
    with pytest.raises(PermissionDenied) as info:
        require(False, "delete", DatasetRecord(id="d", name="d", creator=""))
    assert str(info.value) == "Only an admin can delete this dataset (it has no recorded creator)."


def test_admin_gates() -> None:
    with pytest.raises(PermissionDenied, match="FINETUNE_ALLOW_SERVER_PATHS=1"):
        check_server_path_allowed(AccessSettings())
    with pytest.raises(PermissionDenied, match="allow_custom_backbones = true"):
        check_custom_backbone_allowed(AccessSettings())
    check_server_path_allowed(AccessSettings(allow_server_paths=True))
    check_custom_backbone_allowed(AccessSettings(allow_custom_backbones=True))


# ----------------------------------------------------------------------------- guarded actions
def _add_run(ws: Workspace, run_id: str, creator: str, status: str = RunStatus.SUCCEEDED) -> None:
    ws.add_run(RunRecord(id=run_id, name="first", creator=creator, status=status))
    (ws.run_dir(run_id) / "history.jsonl").write_text("{}\n")


def _add_dataset(ws: Workspace, dataset_id: str, creator: str) -> None:
    ws.add_dataset(DatasetRecord(id=dataset_id, name="cats", creator=creator))
    ws.dataset_dir(dataset_id).mkdir(parents=True)
    (ws.dataset_dir(dataset_id) / "manifest.csv").write_text("path,label\n")


def test_guarded_run_rename_and_delete(workspace: Workspace) -> None:
    _add_run(workspace, "r-a", "alice@x.com")
    with pytest.raises(PermissionDenied, match="Only alice@x.com or an admin can rename"):
        guarded_rename_run(workspace, BOB, "r-a", "hijacked")
    assert workspace.get_run("r-a").name == "first"
    guarded_rename_run(workspace, ALICE, "r-a", "  mine ")
    assert workspace.get_run("r-a").name == "mine"
    guarded_rename_run(workspace, ADMIN, "r-a", "admin's")
    assert workspace.get_run("r-a").name == "admin's"

    with pytest.raises(PermissionDenied, match="can delete this run"):
        guarded_delete_run(workspace, BOB, "r-a")
    assert workspace.get_run("r-a") is not None
    assert (workspace.run_dir("r-a") / "history.jsonl").exists()
    guarded_delete_run(workspace, ALICE, "r-a")
    assert workspace.get_run("r-a") is None
    assert not workspace.run_dir("r-a").exists()
    with pytest.raises(StoreError, match="No run with id 'r-a'"):
        guarded_delete_run(workspace, ADMIN, "r-a")


def test_guarded_dataset_rename_and_delete(workspace: Workspace) -> None:
    _add_dataset(workspace, "d-a", "alice@x.com")
    with pytest.raises(PermissionDenied, match="can rename this dataset"):
        guarded_rename_dataset(workspace, BOB, "d-a", "dogs")
    assert workspace.get_dataset("d-a").name == "cats"
    guarded_rename_dataset(workspace, ALICE, "d-a", "dogs")
    assert workspace.get_dataset("d-a").name == "dogs"
    with pytest.raises(PermissionDenied, match="can delete this dataset"):
        guarded_delete_dataset(workspace, BOB, "d-a")
    assert (workspace.dataset_dir("d-a") / "manifest.csv").exists()
    guarded_delete_dataset(workspace, ADMIN, "d-a")
    assert workspace.get_dataset("d-a") is None
    assert not workspace.dataset_dir("d-a").exists()
    with pytest.raises(StoreError, match="No dataset with id 'd-a'"):
        guarded_rename_dataset(workspace, ADMIN, "d-a", "x")


def test_guarded_stop_and_resume_on_a_queued_run(workspace: Workspace) -> None:
    manager = JobManager(workspace, start=False)  # no worker: queued runs stay queued
    try:
        _add_run(workspace, "r-q", "alice@x.com", status=RunStatus.STOPPED)
        with pytest.raises(PermissionDenied, match="can resume this run"):
            guarded_resume(manager, workspace, BOB, "r-q")
        assert workspace.get_run("r-q").status == RunStatus.STOPPED
        guarded_resume(manager, workspace, ALICE, "r-q")
        assert workspace.get_run("r-q").status == RunStatus.QUEUED
        assert manager.queue_positions() == {"r-q": 1}

        with pytest.raises(PermissionDenied, match="Only alice@x.com or an admin can stop"):
            guarded_stop(manager, workspace, BOB, "r-q")
        assert workspace.get_run("r-q").status == RunStatus.QUEUED
        assert manager.queue_positions() == {"r-q": 1}

        assert guarded_stop(manager, workspace, ALICE, "r-q") is True
        assert workspace.get_run("r-q").status == RunStatus.STOPPED
        assert manager.queue_positions() == {}
    finally:
        manager.shutdown(timeout=1)


def test_guarded_stop_by_admin_and_in_open_mode(workspace: Workspace) -> None:
    manager = JobManager(workspace, start=False)
    try:
        for run_id in ("r-1", "r-2"):
            _add_run(workspace, run_id, "alice@x.com", status=RunStatus.INTERRUPTED)
            manager.resume(run_id)
        assert guarded_stop(manager, workspace, ADMIN, "r-1") is True
        assert guarded_stop(manager, workspace, OPEN, "r-2") is True
        statuses = {r.id: r.status for r in workspace.list_runs()}
        assert statuses == {"r-1": RunStatus.STOPPED, "r-2": RunStatus.STOPPED}
    finally:
        manager.shutdown(timeout=1)


# ----------------------------------------------------------------------------- error text
@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "[Errno 2] No such file or directory: '/home/ann/My Data/cat 1.png'",
            "[Errno 2] No such file or directory: 'cat 1.png'",
        ),
        ("Could not read /tmp/abc/upload.zip.", "Could not read upload.zip."),
        ("bad file /root/x/y.jpg: truncated", "bad file y.jpg: truncated"),
        ("see ~/data/cats/ (missing)", "see cats (missing)"),
        (r"no C:\Users\ann\labels.csv here", "no labels.csv here"),
        ('File "/usr/lib/python3/x.py", line 3', 'File "x.py", line 3'),
        # Not paths: left alone.
        (
            "open http://localhost:8501/oauth2callback; 3/4 done, 12 images/s, a / b",
            "open http://localhost:8501/oauth2callback; 3/4 done, 12 images/s, a / b",
        ),
        ("cats/tabby.png is a duplicate", "cats/tabby.png is a duplicate"),
    ],
)
def test_public_error_strips_server_paths(message: str, expected: str) -> None:
    assert public_error(message, BOB) == expected
    assert public_error(message, ADMIN) == message  # admins see everything


def test_public_error_hides_a_workspace_root_with_spaces(workspace: Workspace) -> None:
    root = workspace.root.parent / "team space"
    message = f"Checkpoint {root}/runs/r-1/best.pt is damaged; see {root} for details"
    cleaned = public_error(message, BOB, roots=[root])
    assert cleaned == "Checkpoint best.pt is damaged; see team space for details"
    assert str(workspace.root.parent) not in cleaned
