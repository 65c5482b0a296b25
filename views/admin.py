"""Users (admins only): accounts, run slots and the workspace's audit log."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from finetune_core.auth import accounts, audit
from finetune_core.auth.access import PermissionDenied, User
from finetune_core.auth.accounts import Account
from finetune_core.jobs.slots import MAX_SLOTS, read_slots, write_slots
from finetune_core.store import StoreError, Workspace
from ui.auth import sessions_section
from ui.components import esc, fmt_when
from ui.services import get_workspace, user

ws = get_workspace()
_FLASH = "admin_flash"  # a message to show after the rerun that redraws the table


def flash(message: str) -> None:
    st.session_state[_FLASH] = message
    st.rerun()


def users_table(existing: list[Account]) -> None:
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "Name": a.name,
                    "Admin": a.is_admin,
                    "Disabled": a.disabled,
                    "Created": fmt_when(a.created_at),
                    "Created by": a.created_by or "–",
                }
                for a in existing
            ],
            columns=["Name", "Admin", "Disabled", "Created", "Created by"],
        ),
        hide_index=True,
        width="stretch",
    )


def create_user_form(workspace: Workspace, me: User, first: bool) -> None:
    with st.form("admin_create_user", clear_on_submit=True):
        st.markdown("**Create a user**")
        name = st.text_input("Name", max_chars=200, key="admin_new_name")
        password = st.text_input(
            "Password",
            type="password",
            key="admin_new_password",
            help=f"At least {accounts.MIN_PASSWORD_CHARS} characters; tell it to them privately.",
        )
        admin = st.checkbox(
            "Admin", value=first, disabled=first, key="admin_new_is_admin",
            help="The first account is an admin." if first else
            "May manage users and every run, and sees server paths.",
        )  # fmt: skip
        submitted = st.form_submit_button("Create user", type="primary")
    if submitted:
        try:
            account = accounts.create_account(
                workspace, me, name, password, is_admin=admin or first
            )
        except (StoreError, PermissionDenied) as exc:
            st.error(esc(str(exc)))
        else:
            flash(f"Created {esc(account.name)}.")


def manage_user(workspace: Workspace, me: User, existing: list[Account]) -> None:
    names = [a.name for a in existing]
    chosen = st.selectbox("User", names, key="admin_user")
    account = next((a for a in existing if a.name == chosen), None)
    if account is None:
        return
    with st.container(horizontal=True):
        label = "Enable" if account.disabled else "Disable"
        if st.button(label, key="admin_toggle_disabled", icon=":material/block:"):
            _apply(lambda: accounts.set_disabled(workspace, me, account.name, not account.disabled))
        label = "Remove admin" if account.is_admin else "Make admin"
        if st.button(label, key="admin_toggle_admin", icon=":material/shield_person:"):
            _apply(lambda: accounts.set_admin(workspace, me, account.name, not account.is_admin))
    with st.form("admin_reset_password", clear_on_submit=True):
        new = st.text_input(f"New password for {account.name}", type="password",
                            key="admin_reset_pw")  # fmt: skip
        if st.form_submit_button("Reset password"):
            try:
                accounts.set_password(workspace, me, account.name, new)
            except (StoreError, PermissionDenied) as exc:
                st.error(esc(str(exc)))
            else:
                flash(f"Password of {esc(account.name)} reset; their sessions ended.")
    sessions_section(me, account.name)


def _apply(change) -> None:
    try:
        change()
    except (StoreError, PermissionDenied) as exc:
        st.error(esc(str(exc)))
    else:
        st.rerun()


def slots_section(workspace: Workspace, me: User) -> None:
    slots = read_slots(workspace)
    with st.form("admin_slots"):
        st.markdown("**Run slots**: how many runs train at once")
        left, right = st.columns(2)
        cpu = left.number_input("On the CPU", 1, MAX_SLOTS, slots.cpu, key="admin_cpu_slots")
        gpu = right.number_input("Per GPU", 1, MAX_SLOTS, slots.gpu, key="admin_gpu_slots")
        if st.form_submit_button("Save slots"):
            try:
                new = write_slots(workspace, cpu=int(cpu), gpu=int(gpu))
            except StoreError as exc:
                st.error(esc(str(exc)))
            else:
                audit.record(workspace, me.name, "set slots", "settings", "slots",
                             f"cpu={new.cpu} gpu={new.gpu}")  # fmt: skip
                st.success(f"Saved: {new.cpu} on the CPU, {new.gpu} per GPU.")


def audit_section(workspace: Workspace) -> None:
    log = audit.entries(workspace, limit=500)
    st.caption(f"The newest {len(log)} entries, newest first.")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "When": fmt_when(e.time),
                    "Who": e.actor,
                    "Action": e.action,
                    "What": f"{e.target_kind} {e.target_id}".strip(),
                    "Detail": e.detail,
                }
                for e in log
            ],
            columns=["When", "Who", "Action", "What", "Detail"],
        ),
        hide_index=True,
        width="stretch",
        key="admin_audit",
    )


def main() -> None:
    st.title("Users")
    me = user()
    if not me.is_admin:
        st.error("This page is for admins. Ask an admin if you need an account changed.")
        st.stop()
    message = st.session_state.pop(_FLASH, None)
    if message:
        st.success(message)
    existing = accounts.list_accounts(ws)
    if not existing:
        st.info(
            "Open access: nobody signs in. Create the first account (an admin) to turn "
            "sign-in on for everybody.",
            icon=":material/lock_open:",
        )
    else:
        users_table(existing)
    left, right = st.columns(2, gap="large")
    with left:
        create_user_form(ws, me, first=not existing)
    with right:
        if existing:
            manage_user(ws, me, existing)
    st.subheader("Run slots")
    slots_section(ws, me)
    st.subheader("Audit log")
    audit_section(ws)


main()
