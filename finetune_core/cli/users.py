"""``python -m finetune_core users add|list|passwd|disable|enable``: the workspace's accounts.

Whoever runs these can write the workspace's database, so the command line counts as an
admin (recorded in the audit log as ``cli:<os user>``). ``users add NAME --admin`` on a
workspace without accounts creates the first admin, and from then on the dashboard asks
everybody to sign in.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from finetune_core.auth import accounts
from finetune_core.auth.access import PermissionDenied, User
from finetune_core.cli.common import cli_creator, open_workspace, workspace_root
from finetune_core.store import StoreError, Workspace

EXIT_REFUSED = 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``users`` command group."""
    group = sub.add_parser("users", help="the accounts people sign in to the dashboard with")
    commands = group.add_subparsers(dest="users_command", required=True, metavar="SUBCOMMAND")

    def command(
        name: str, help_: str, handler, *, with_name: bool = True
    ) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help_, description=help_)
        if with_name:
            p.add_argument("name", help="the account's name")
        # also accepted after the subcommand; SUPPRESS keeps a global --workspace when absent
        p.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace folder")
        p.set_defaults(handler=handler)
        return p

    add = command("add", "create an account (the first one must be --admin)", cmd_add)
    add.add_argument("--admin", action="store_true", help="may manage accounts and every run")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")  # fmt: skip
    lst = command("list", "list the accounts", cmd_list, with_name=False)
    lst.add_argument("--json", action="store_true", help="print JSON")
    pw = command("passwd", "set an account's password (its other sessions end)", cmd_passwd)
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")  # fmt: skip
    command("disable", "refuse an account's sign-in and end its sessions", cmd_disable)
    command("enable", "let a disabled account sign in again", cmd_enable)


def _cli_admin() -> User:
    return User(cli_creator(), is_admin=True)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat the password: ") != first:
        raise accounts.AccountError("The two passwords differ; nothing was changed.")
    return first


def _refused(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_REFUSED


def cmd_add(args: argparse.Namespace) -> int:
    workspace = Workspace(workspace_root(args.workspace))  # a new server starts here
    try:
        account = accounts.create_account(
            workspace, _cli_admin(), args.name, _read_password(args), is_admin=args.admin
        )
    except (StoreError, PermissionDenied) as exc:
        return _refused(exc)
    print(f"Created {'admin ' if account.is_admin else ''}account {account.name}.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    workspace = open_workspace(args.workspace)
    if workspace is None:
        return EXIT_REFUSED
    rows = [
        {"name": a.name, "admin": a.is_admin, "disabled": a.disabled,
         "created_at": a.created_at, "created_by": a.created_by}
        for a in accounts.list_accounts(workspace)
    ]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif not rows:
        print("No accounts: the dashboard is open. Create the first admin with: "
              "python -m finetune_core users add NAME --admin")  # fmt: skip
    for row in [] if args.json else rows:
        flags = ", ".join(f for f in ("admin", "disabled") if row[f])
        print(f"{row['name']}{f' ({flags})' if flags else ''}  created {row['created_at']}"
              f" by {row['created_by'] or '-'}")  # fmt: skip
    return 0


def _change(args: argparse.Namespace, change, done: str) -> int:
    workspace = open_workspace(args.workspace)
    if workspace is None:
        return EXIT_REFUSED
    try:
        change(workspace)
    except (StoreError, PermissionDenied) as exc:
        return _refused(exc)
    print(done)
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    return _change(
        args,
        lambda ws: accounts.set_password(ws, _cli_admin(), args.name, _read_password(args)),
        f"Password of {args.name} changed; its other sessions are signed out.",
    )


def cmd_disable(args: argparse.Namespace) -> int:
    return _change(
        args,
        lambda ws: accounts.set_disabled(ws, _cli_admin(), args.name, True),
        f"{args.name} is disabled.",
    )


def cmd_enable(args: argparse.Namespace) -> int:
    return _change(
        args,
        lambda ws: accounts.set_disabled(ws, _cli_admin(), args.name, False),
        f"{args.name} is enabled.",
    )
