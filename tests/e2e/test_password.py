"""Password mode: nothing of the app shows before sign-in, on any URL; a wrong password
is refused with a message; the right one opens the app."""

from __future__ import annotations

import re

import pytest

from tests.helpers.e2e import AppServer, alerts, main, open_app, wait_idle, wait_text

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "correct horse battery staple"
# What the sign-in screen may show; anything else in the main area is a leak.
SIGN_IN_TEXT = {"Finetune Dashboard", "Your name", "Access password", "Sign in"}
# Streamlit's own words in a form: the password field's show/hide icon, a submit hint.
FORM_CHROME = {"visibility", "visibility_off", "Press Enter to submit form"}
# Texts of the pages behind the sign-in (titles, buttons, sidebar) that must not show.
APP_TEXT = [
    "Train a quick demo model",
    "Recent runs",
    "Training",
    "Queue",
    "No runs yet",
    "Datasets",
    "Jobs",
    "Open access",
]


@pytest.fixture(scope="module")
def app_env() -> dict[str, str]:
    return {"FINETUNE_PASSWORD": PASSWORD}


def assert_signed_out(page) -> None:
    """Only the sign-in form: no page content, no navigation, no sidebar."""
    wait_text(page, "Access password")
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
    form.get_by_label("Access password").fill(password)
    form.get_by_role("button", name="Sign in").click()
    wait_idle(page, timeout=30)


def test_deep_link_shows_only_sign_in(app_server: AppServer, page, shot) -> None:
    # First visit to this fresh server, straight to a page that is not the home page.
    open_app(page, app_server, "/training")
    assert_signed_out(page)
    shot(page, "training-signed-out")


def test_wrong_then_right_password(app_server: AppServer, page, shot) -> None:
    open_app(page, app_server, "/")
    assert_signed_out(page)
    shot(page, "01-sign-in")

    sign_in(page, "mallory", "guess")
    wait_text(page, "Wrong password")
    assert any("Wrong password" in e for e in alerts(page, "Error"))
    assert page.locator('[data-testid="stSidebarNav"]').count() == 0
    assert "Train a quick demo model" not in page.locator("body").inner_text()
    shot(page, "02-wrong-password")

    sign_in(page, "alice", PASSWORD)
    wait_text(page, "Train a quick demo model")
    assert page.locator('[data-testid="stSidebarNav"]').count() == 1
    assert page.locator('[data-testid="stSidebar"]').get_by_text("Signed in as alice").count() == 1
    shot(page, "03-signed-in")


def test_sign_in_on_a_deep_link_opens_that_page(app_server: AppServer, page) -> None:
    open_app(page, app_server, "/training")
    assert_signed_out(page)
    sign_in(page, "bob", PASSWORD)
    wait_text(page, re.compile(r"^(No runs yet|Train a quick demo model)"))
    assert re.search(r"/training(\?|$)", page.url), page.url
    wait_text(page, "No runs yet")
    assert main(page).get_by_role("heading", name="Training").count() == 1


def test_a_reload_keeps_the_sign_in_until_sign_out(app_server: AppServer, page, shot) -> None:
    open_app(page, app_server, "/training")
    sign_in(page, "carol", PASSWORD)
    wait_text(page, "No runs yet")
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["finetune_session"]["sameSite"] == "Strict"
    assert "carol" not in cookies["finetune_session"]["value"]  # encoded and signed

    page.reload()  # a new Streamlit session: signed in again from the cookie
    wait_text(page, "No runs yet")
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert sidebar.get_by_text("Signed in as carol").count() == 1
    shot(page, "01-after-reload")

    # a forged cookie (another name, the old signature) is refused
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
