"""``users add|list|passwd|disable|enable`` (finetune_core/cli/users.py)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from finetune_core.auth import accounts, audit
from finetune_core.auth.accounts import SignInError
from finetune_core.cli import users
from finetune_core.store import Workspace


def cli(root: Path, *argv: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace")
    users.register(parser.add_subparsers(dest="command", required=True))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    args = parser.parse_args(["--workspace", str(root), *argv])
    return int(args.handler(args))


def test_users_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "ws"

    def run(*argv: str, stdin: str = "") -> int:
        return cli(root, *argv, stdin=stdin, monkeypatch=monkeypatch)

    assert run("users", "add", "ann", "--password-stdin", stdin="ann password 1\n") == 1
    assert "first account must be an admin" in capsys.readouterr().err
    assert run("users", "add", "root", "--admin", "--password-stdin", stdin="root password\n") == 0
    assert capsys.readouterr().out == "Created admin account root.\n"
    assert run("users", "add", "ann", "--password-stdin", stdin="ann password 1\n") == 0
    assert run("users", "add", "ANN", "--password-stdin", stdin="other password\n") == 1
    assert "already an account named 'ann'" in capsys.readouterr().err
    assert run("users", "add", "bob", "--password-stdin", stdin="short\n") == 1
    assert "at least 10 characters" in capsys.readouterr().err

    ws = Workspace(root)
    assert accounts.authenticate(ws, "root", "root password").is_admin
    assert run("users", "passwd", "ann", "--password-stdin", stdin="ann password 2\n") == 0
    with pytest.raises(SignInError):
        accounts.authenticate(ws, "ann", "ann password 1")
    assert accounts.authenticate(ws, "ann", "ann password 2").name == "ann"

    assert run("users", "disable", "ann") == 0
    with pytest.raises(SignInError, match="disabled"):
        accounts.authenticate(ws, "ann", "ann password 2")
    assert run("users", "disable", "root") == 1
    assert "last enabled admin" in capsys.readouterr().err
    capsys.readouterr()
    assert run("users", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["admin"], r["disabled"]) for r in listed] == [
        ("ann", False, True),
        ("root", True, False),
    ]
    assert run("users", "enable", "ann") == 0
    assert run("users", "enable", "nobody") == 1
    assert "No account named 'nobody'" in capsys.readouterr().err
    actions = [(e.action, e.target_id) for e in audit.entries(ws)]
    assert actions[0] == ("enable user", "ann")
    assert all(e.actor.startswith("cli:") for e in audit.entries(ws))
    assert "password" not in json.dumps(listed)
