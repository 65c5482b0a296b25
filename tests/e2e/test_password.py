"""Accounts mode in a real browser: nothing of the app shows before sign-in (a deep link
included); another user's password and "admin" typed as a name are refused; the account's
own password opens the page that was linked; a reload stays signed in, a forged cookie
does not, and sign-out ends it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from finetune_core.auth import accounts
from finetune_core.store import Workspace
from tests.helpers.e2e import (
    AppServer,
    alerts,
    main,
    open_app,
    start_server,
    stop_server,
    wait_idle,
    wait_text,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SETUP_PASSWORD = "correct horse battery staple"  # FINETUNE_PASSWORD: signs nobody in
CAROL_PW, BOB_PW, ROOT_PW = "carol's own password", "bob's own password", "root password!"
# What the sign-in screen may show; anything else in the main area is a leak.
SIGN_IN_TEXT = {
    "Finetune Dashboard",
    "Your name",
    "Password",
    "Sign in",
    "No account yet? Ask an admin of this server to create one.",
}
# Streamlit's own words in a form: the password field's show/hide icon, a submit hint.
FORM_CHROME = {"visibility", "visibility_off", "Press Enter to submit form"}
# Texts of the pages behind the sign-in (titles, buttons, sidebar) that must not show.
APP_TEXT = ["Train a quick demo model", "Recent runs", "Queue", "No runs yet", "Datasets",
            "Jobs", "Open access"]  # fmt: skip


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The app on a workspace that already has accounts (root, carol, bob)."""
    root_dir = tmp_path_factory.mktemp("e2e") / "workspace"
    workspace = Workspace(root_dir)
    root = accounts.bootstrap_admin(workspace, "root", ROOT_PW)
    accounts.create_account(workspace, root.user(), "carol", CAROL_PW)
    accounts.create_account(workspace, root.user(), "bob", BOB_PW)
    workspace.close()
    server = start_server(root_dir, {"FINETUNE_PASSWORD": SETUP_PASSWORD})
    try:
        yield server
    finally:
        stop_server(server)


def assert_signed_out(page) -> None:
    """Only the sign-in form: no page content, no navigation, no sidebar."""
    wait_text(page, "Your name")
    wait_idle(page)
    page.wait_for_timeout(1000)  # anything rendered after the form would be a leak
    lines = {line.strip() for line in main(page).inner_text().splitlines() if line.strip()}
    extra = lines - SIGN_IN_TEXT - FORM_CHROME
    assert not extra, f"the sign-in screen shows more than the form: {sorted(extra)}"
    body = page.locator("body").inner_text()
    leaked = [text for text in APP_TEXT if text in body]
    assert not leaked, f"shown before sign-in: {leaked}"
    assert page.locator('[data-testid="stSidebarNav"]').count() == 0


def sign_in(page, name: str, password: str) -> None:
    form = main(page).locator('[data-testid="stForm"]')
    form.get_by_label("Your name").fill(name)
    form.get_by_label("Password", exact=True).fill(password)
    form.get_by_role("button", name="Sign in").click()
    wait_idle(page, timeout=30)


def test_accounts_sign_in_through_the_browser(app_server: AppServer, page, shot) -> None:
    # First visit to this fresh server, straight to a page that is not the home page.
    open_app(page, app_server, "/training")
    assert_signed_out(page)
    shot(page, "01-sign-in")

    for name, password in [("carol", BOB_PW), ("admin", ROOT_PW), ("carol", SETUP_PASSWORD)]:
        sign_in(page, name, password)
        wait_text(page, "Wrong name or password.")
        assert alerts(page, "Error") == ["Wrong name or password."]
        assert page.locator('[data-testid="stSidebarNav"]').count() == 0
    shot(page, "02-wrong-password")

    sign_in(page, "carol", CAROL_PW)
    wait_text(page, "No runs yet")
    assert re.search(r"/training(\?|$)", page.url), page.url
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert sidebar.get_by_text("Signed in as carol").count() == 1
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["finetune_session"]["sameSite"] == "Strict"
    assert "carol" not in cookies["finetune_session"]["value"]  # encoded and signed
    shot(page, "03-signed-in")

    page.reload()  # a new Streamlit session: signed in again from the cookie
    wait_text(page, "No runs yet")
    assert sidebar.get_by_text("Signed in as carol").count() == 1

    # a forged cookie (another account's name, carol's signature) is refused
    value = cookies["finetune_session"]["value"]
    forged = "Ym9i" + value[value.index(".") :]  # base64url("bob")
    page.context.add_cookies([{**cookies["finetune_session"], "value": forged}])
    page.reload()
    assert_signed_out(page)
    page.context.add_cookies([cookies["finetune_session"]])
    page.reload()
    wait_text(page, "No runs yet")

    sidebar.get_by_role("button", name="Sign out").click()
    assert_signed_out(page)
    page.wait_for_function("() => !document.cookie.includes('finetune_session=')", timeout=10_000)
    page.reload()
    assert_signed_out(page)
