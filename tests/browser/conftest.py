"""A headless Debian chromium driven by Playwright, for the HTMX pages."""

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Flags for a sandboxed, offline CI machine: no GPU, no background connections, a fresh profile.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]

# Playwright's sync API keeps an event loop in the test thread; Django's ORM calls in the test
# itself are still synchronous and safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


ADMIN_USERNAME = "boss"
ADMIN_PASSWORD = "browser-test-password"


@pytest.fixture
def admin_user(django_user_model):
    """A superuser that the browser tests log in as."""
    return django_user_model.objects.create_superuser(ADMIN_USERNAME, "boss@example.com", ADMIN_PASSWORD)


def admin_log_in(page, live_server, path: str) -> None:
    """Log the admin in through the admin login page and land on ``path``."""
    page.goto(f"{live_server.url}/admin/login/?next={path}")
    page.fill("#id_username", ADMIN_USERNAME)
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}{path}")
