"""Opening the dashboard in the browser, signed in or not, with its console watched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Page, expect

from tests.web.conftest import Console, WebServer

# The local driver answers fast, but this machine is shared: generous, still bounded.
WAIT_MS = 30_000
DESKTOP = {"width": 1280, "height": 800}
NARROW = {"width": 400, "height": 800}
expect.set_options(timeout=WAIT_MS)


async def new_page(browser: Any, console: Console, viewport: dict[str, int] = DESKTOP) -> Page:
    context = await browser.new_context(viewport=viewport)
    context.set_default_timeout(WAIT_MS)
    page: Page = await context.new_page()
    page.on(
        "console",
        lambda message: (
            console.messages.append(f"{message.type}: {message.text}")
            if message.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda error: console.messages.append(f"page error: {error}"))
    return page


async def sign_in(page: Page, web: WebServer, agent: str) -> None:
    await page.goto(web.base + "/")
    await page.get_by_label("Agent token").fill(web.tokens[agent])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Projects", level=1)).to_be_visible(
        timeout=WAIT_MS
    )


async def open_project(page: Page, web: WebServer, project_id: str, section: str) -> None:
    """Go to a project's section by its URL (a deep link) and wait for the live socket."""
    await page.goto(f"{web.base}/ui/projects/{project_id}/{section}")
    await expect(page.locator(".connection")).to_have_text("live", timeout=WAIT_MS)


async def screenshot(page: Page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
