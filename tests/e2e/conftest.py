"""End-to-end fixtures: the real app (``streamlit run app.py``) in headless Chromium.

- ``app_server`` (one per test module): the app on a free port with its own workspace;
  a module adds server environment (e.g. a password) by overriding ``app_env``.
- ``browser`` (one per session): Debian's Chromium driven by Playwright.
- ``page`` / ``new_page``: pages whose console errors and page errors fail the test.
- ``shot(page, name)``: a screenshot at ``artifacts/e2e/<test>-<name>.png``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.e2e import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    AppServer,
    ConsoleLog,
    full_page_screenshot,
    start_server,
    stop_server,
)


@pytest.fixture(scope="module")
def app_env() -> dict[str, str]:
    """Extra server environment; a test module overrides it."""
    return {}


@pytest.fixture(scope="module")
def app_server(
    tmp_path_factory: pytest.TempPathFactory, app_env: dict[str, str]
) -> Iterator[AppServer]:
    workspace = tmp_path_factory.mktemp("e2e") / "workspace"
    server = start_server(workspace, app_env)
    try:
        yield server
    finally:
        stop_server(server)


# Module scope: a live sync Playwright leaves an asyncio loop (and a node driver child
# process) behind, which breaks later tests that start their own Playwright or check
# that no child process survives.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(
            "Chromium not found: apt-get install -y chromium (Debian) to run the browser tests"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def console() -> ConsoleLog:
    return ConsoleLog()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Keep each phase's report on the test item, for the fixtures' teardown to read."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _test_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)


@pytest.fixture
def new_page(
    browser, console: ConsoleLog, request: pytest.FixtureRequest
) -> Iterator[Callable[..., object]]:
    """``new_page()`` opens a page in a fresh browser context (a separate user). Every
    page of those contexts is watched; a console error or page error fails the test.
    When the test fails, each open page is saved as ``<test>-FAILED-<n>.png``."""
    contexts = []

    def open_page(**context_args):
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True, **context_args)
        context.set_default_timeout(30_000)
        context.on("page", console.watch)
        contexts.append(context)
        return context.new_page()

    yield open_page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        pages = [p for c in contexts for p in c.pages]
        for n, open_ in enumerate(pages):
            try:
                full_page_screenshot(open_, ARTIFACTS / f"{_test_name(request)}-FAILED-{n}.png")
            except Exception as exc:  # a crashed page must not hide the test's own failure
                print(f"no screenshot of {open_.url}: {exc}")
    for context in contexts:
        context.close()
    console.assert_clean()


@pytest.fixture
def page(new_page):
    return new_page()


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[object, str], Path]:
    """``shot(page, name)``: save a full-page screenshot for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    test = _test_name(request)

    def take(page, name: str) -> Path:
        path = ARTIFACTS / f"{test}-{name}.png"
        full_page_screenshot(page, path)
        return path

    return take
