"""The dashboard in a real browser (Debian's Chromium) against a real server on the local
driver: what a person does with it, end to end, with agents working over MCP meanwhile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from server.surfaces.http.ws.session import STREAMS
from tests.helpers import call, eventually
from tests.servers import http_client
from tests.web.conftest import Console, WebServer
from tests.web.fake_terminal_socket import TERMINAL, FakeTerminalSocket
from tests.web.pages import NARROW, new_page, open_project, screenshot, sign_in

pytestmark = pytest.mark.anyio

FIRST_PAGE_BUDGET = 300 * 1000  # bytes transferred


async def read_file(web: WebServer, project_id: str, path: str) -> str:
    async with web.rest("alice") as alice:
        response = await alice.get(f"/projects/{project_id}/files/{path}")
        assert response.status_code == 200, response.text
        return response.text


async def test_a_person_signs_in_creates_a_project_and_writes_a_file_in_the_editor(
    web: WebServer, browser: Any, console: Console, artifacts: Path
) -> None:
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    await expect(page.get_by_text("Signed in as")).to_contain_text("alice")

    await page.get_by_label("Name").fill("web-demo")
    await page.get_by_label("Description (optional)").fill("made in the browser")
    await page.get_by_role("button", name="Create project").click()
    await expect(page.get_by_role("heading", name="web-demo", level=1)).to_be_visible()
    await expect(page.locator(".connection")).to_have_text("live")
    project_id = page.url.rstrip("/").split("/")[-1]

    await page.get_by_role("button", name="New file").click()
    await page.get_by_label("New file path").fill("notes/hello.md")
    await page.get_by_role("button", name="Create", exact=True).click()
    editor = page.get_by_role("textbox", name="notes/hello.md")
    await editor.fill("# Hello\n\nwritten in the dashboard\n")
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.locator(".editor-state")).to_contain_text("saved")
    await expect(page.get_by_role("button", name="hello.md")).to_be_visible()
    assert await read_file(web, project_id, "notes/hello.md") == (
        "# Hello\n\nwritten in the dashboard\n"
    )
    await screenshot(page, artifacts, "workspace-editor")

    # The token went to the server once: not in the page's storage, not readable as a cookie.
    stored = await page.evaluate(
        "() => JSON.stringify([localStorage, sessionStorage, document.cookie, location.href])"
    )
    assert web.tokens["alice"] not in stored
    assert "pvm_session" not in stored

    await page.get_by_role("link", name="Projects", exact=True).first.click()
    row = page.locator("tr", has_text="web-demo")
    await expect(row.get_by_text("running")).to_be_visible()
    await expect(row.locator("td[data-label='Disk']")).to_contain_text("of 10 GB")
    await screenshot(page, artifacts, "projects")
    assert console.problems() == []


async def test_an_agents_mcp_command_appears_in_the_live_feed_and_its_output_streams(
    web: WebServer, browser: Any, console: Console, artifacts: Path
) -> None:
    project_id = await web.project("feed-demo", {"bob": "read_write"})
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    await open_project(page, web, project_id, "activity")

    async with http_client(web.mcp_url, web.tokens["bob"]) as bob:
        started = await call(
            bob, "run_command", project_id=project_id, wait_s=0, keep_stdin_open=True,
            command='echo "first line"; read answer; echo "bob got $answer"',
        )  # fmt: skip
        entry = page.locator("ol.feed li", has_text="bob").filter(has_text="first line")
        await expect(entry.first).to_be_visible()
        await entry.first.get_by_role("button", name=re.compile("^Output of")).click()
        output = page.locator("pre.output")
        await expect(output).to_contain_text("first line")
        # Still running (waiting for its input) while the first line is already shown.
        await expect(page.locator(".output-status")).to_contain_text("running")

        await call(bob, "send_input", execution_id=started["execution_id"], data="yes\n")
        await expect(output).to_contain_text("bob got yes")
        await expect(page.locator(".output-status")).to_contain_text("completed, exit code 0")
    finished = page.locator("ol.feed li", has_text="completed")
    await expect(finished.first).to_be_visible()
    await screenshot(page, artifacts, "live-activity")
    assert console.problems() == []


@pytest.mark.skipif(
    "terminal" not in STREAMS,
    reason="the project WebSocket has no 'terminal' stream yet: interactive terminals (issue "
    "11, item 3, branch h6-term) are not on this branch",
)
async def test_a_terminal_opens_in_the_browser_and_runs_a_command(
    web: WebServer, browser: Any, console: Console, artifacts: Path
) -> None:
    project_id = await web.project("terminal-demo")
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    await open_project(page, web, project_id, "terminal")
    await page.get_by_role("button", name="Open a terminal").click()
    rows = page.locator(".terminal-screen .xterm-rows")
    # Typing before the shell shows its prompt could be flushed by its terminal setup.
    await expect(rows).to_contain_text(re.compile(r"[#$>]\s*$", re.MULTILINE))
    await page.keyboard.type("echo $((6 * 7)) from-the-terminal\n")
    await expect(rows).to_contain_text("42 from-the-terminal")
    await screenshot(page, artifacts, "terminal")
    await page.get_by_role("button", name="Close terminal").click()
    await expect(page.get_by_role("button", name="Open a terminal")).to_be_visible()
    assert console.problems() == []


async def test_the_terminal_panel_drives_xterm_over_the_terminal_stream(
    web: WebServer, browser: Any, console: Console, artifacts: Path
) -> None:
    project_id = await web.project("terminal-panel-demo")
    page = await new_page(browser, console)
    fake = FakeTerminalSocket(project_id)
    await page.route_web_socket(re.compile(r"/ws$"), fake.attach)
    await sign_in(page, web, "alice")
    await open_project(page, web, project_id, "terminal")
    await page.get_by_role("button", name="Open a terminal").click()
    screen = page.locator(".terminal-screen")
    await expect(screen).to_contain_text("fake$")
    await expect(page.locator(".panel-terminal")).to_contain_text("Connected")
    opened = fake.of_type("open")[0]
    assert opened["cols"] > 20
    assert opened["rows"] > 5
    await page.keyboard.type("ls -la")
    await page.keyboard.press("Enter")
    await expect(screen).to_contain_text("the fake shell got: ls -la")
    typed = "".join(m["data"] for m in fake.of_type("input"))
    assert typed == "ls -la\r"
    assert {m["execution_id"] for m in fake.of_type("input")} == {TERMINAL}

    # The connection drops; the panel attaches again from its cursor: nothing lost or twice.
    await fake.routes[-1].close(code=1012, reason="dropped by the test")
    await expect(page.locator(".connection")).to_contain_text("offline")
    seen = len(fake.printed)
    fake.prints_unseen("\r\nprinted while the page was away\r\n")
    await expect(page.locator(".connection")).to_have_text("live")
    await expect(page.locator(".panel-terminal")).to_contain_text("Reconnected")
    assert fake.of_type("attach")[-1]["since"] == seen
    await expect(screen).to_contain_text("printed while the page was away")
    await page.locator(".terminal-screen .xterm").click()
    await page.keyboard.type("pwd")
    await page.keyboard.press("Enter")
    await expect(screen).to_contain_text("the fake shell got: pwd")
    text = await screen.inner_text()
    assert text.count("the fake shell got: ls -la") == 1
    assert text.count("printed while the page was away") == 1

    await page.set_viewport_size({"width": 900, "height": 700})  # the terminal follows

    async def resized() -> bool:
        await page.evaluate("() => new Promise(requestAnimationFrame)")  # a frame goes by
        return bool(fake.of_type("resize"))

    await eventually(resized, what="a resize message after the window shrank")
    assert fake.of_type("resize")[-1]["cols"] < opened["cols"]
    await page.keyboard.press("F6")  # the way out of the terminal for the keyboard
    await expect(page.get_by_role("button", name="Close terminal")).to_be_focused()
    await screenshot(page, artifacts, "terminal-panel")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("button", name="Open a terminal")).to_be_visible()
    assert fake.of_type("close")
    assert console.problems() == []  # xterm.js ran under the page's CSP


async def test_an_edit_conflict_shows_both_versions_and_who_made_theirs_and_is_resolved(
    web: WebServer, browser: Any, console: Console, artifacts: Path
) -> None:
    project_id = await web.project("conflict-demo", {"bob": "read_write"})
    async with web.rest("alice") as alice:
        await alice.put(f"/projects/{project_id}/files/shared.txt", content=b"line one\n")
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    await open_project(page, web, project_id, "files")
    await page.get_by_role("button", name="shared.txt").click()
    editor = page.get_by_role("textbox", name="shared.txt")
    await expect(editor).to_have_value("line one\n")

    async with http_client(web.mcp_url, web.tokens["bob"]) as bob:
        # Keep mine: alice's edit replaces bob's version, knowingly.
        await editor.fill("line one\nalice's line\n")
        await call(bob, "write_file", project_id=project_id, path="shared.txt",
                   content="line one\nbob's line\n")  # fmt: skip
        await expect(page.locator(".editor-side .notice")).to_contain_text("bob changed shared.txt")
        await page.get_by_role("button", name="Save", exact=True).click()
        conflict = page.get_by_role("alert").filter(has_text="Conflict")
        await expect(conflict).to_contain_text("bob saved another version")
        await expect(conflict.locator("pre.theirs")).to_have_text("line one\nbob's line\n")
        await expect(conflict.locator("pre.mine")).to_have_text("line one\nalice's line\n")
        await screenshot(page, artifacts, "edit-conflict")
        await conflict.get_by_role("button", name="Keep mine").click()
        await expect(conflict).to_be_hidden()
        assert await read_file(web, project_id, "shared.txt") == "line one\nalice's line\n"

        # Take theirs: bob's next version wins and alice's unsaved edit is dropped.
        await editor.fill("line one\nalice's second thought\n")
        await call(bob, "write_file", project_id=project_id, path="shared.txt",
                   content="bob rewrote it\n")  # fmt: skip
        await page.get_by_role("button", name="Save", exact=True).click()
        await page.get_by_role("button", name="Take theirs").click()
        await expect(editor).to_have_value("bob rewrote it\n")
        await expect(page.locator(".editor-state")).to_contain_text("saved")
    assert await read_file(web, project_id, "shared.txt") == "bob rewrote it\n"
    # The browser logs each refused save (412) itself; nothing else may show up.
    assert console.problems("status of 412") == []


async def test_an_admin_removes_a_member_after_confirming(
    web: WebServer, browser: Any, console: Console, artifacts: Path
) -> None:
    project_id = await web.project("members-demo", {"bob": "read_write", "carol": "read_only"})
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    await open_project(page, web, project_id, "members")
    bob_row = page.locator("tr[data-member='bob']")
    await expect(bob_row).to_be_visible()
    await screenshot(page, artifacts, "members")

    await bob_row.get_by_role("button", name="Remove bob").click()
    dialog = page.get_by_role("dialog", name="Remove bob?")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(bob_row).to_be_visible()

    await bob_row.get_by_role("button", name="Remove bob").click()
    await page.get_by_role("dialog").get_by_role("button", name="Remove bob").click()
    await expect(bob_row).to_be_hidden()
    async with web.rest("alice") as alice:
        members = (await alice.get(f"/projects/{project_id}/members")).json()["members"]
    assert sorted(m["agent_id"] for m in members) == ["alice", "carol"]
    feed_entry = "removed bob"
    await page.get_by_role("link", name="Activity").click()
    await expect(page.locator("ol.feed")).to_contain_text(feed_entry)
    assert console.problems() == []


async def test_a_read_only_member_sees_the_workspace_but_no_controls_to_change_it(
    web: WebServer, browser: Any, console: Console
) -> None:
    project_id = await web.project("readonly-demo", {"carol": "read_only"})
    async with web.rest("alice") as alice:
        await alice.put(f"/projects/{project_id}/files/readme.txt", content=b"look only\n")
    page = await new_page(browser, console)
    await sign_in(page, web, "carol")
    await open_project(page, web, project_id, "files")
    await page.get_by_role("button", name="readme.txt").click()
    editor = page.get_by_role("textbox", name="readme.txt")
    await expect(editor).to_have_value("look only\n")
    await expect(editor).not_to_be_editable()
    await expect(page.get_by_role("button", name="Save", exact=True)).to_be_disabled()
    await expect(page.get_by_role("button", name="New file")).to_be_hidden()
    await expect(page.get_by_role("link", name="Settings")).to_have_count(0)
    await page.get_by_role("link", name="Commands").click()
    await expect(page.get_by_role("form", name="Run a command")).to_be_hidden()
    assert console.problems() == []


async def test_the_dashboard_works_with_the_keyboard_alone(
    web: WebServer, browser: Any, console: Console
) -> None:
    page = await new_page(browser, console)
    await page.goto(web.base + "/")
    token_input = page.get_by_label("Agent token")
    await expect(token_input).to_be_visible()
    await tab_to(page, "#" + str(await token_input.get_attribute("id")))
    await page.keyboard.type(web.tokens["alice"])
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Projects", level=1)).to_be_focused()

    await tab_to(page, "input[name='name']")
    await page.keyboard.type("keyboard-demo")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="keyboard-demo", level=1)).to_be_focused()
    # Focus is visible: a focused control draws an outline.
    await tab_to(page, "button:text('New file')")
    outline = await page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")
    assert console.problems() == []


async def tab_to(page: Page, selector: str, most: int = 60) -> None:
    """Press Tab until the element matching ``selector`` has focus (it must be reachable)."""
    target = page.locator(selector).first
    for _ in range(most):
        if await target.evaluate("element => element === document.activeElement"):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"{selector} was not reached with {most} presses of Tab")


async def test_the_pages_fit_a_narrow_screen(
    web: WebServer, browser: Any, console: Console, artifacts: Path
) -> None:
    project_id = await web.project("narrow-demo", {"bob": "read_write"})
    page = await new_page(browser, console, NARROW)
    await sign_in(page, web, "alice")
    for section in ("", "files", "commands", "members"):
        if section:
            await open_project(page, web, project_id, section)
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{section or 'projects'} is {overflow}px wider than the screen"
    await screenshot(page, artifacts, "narrow-members")
    assert console.problems() == []


async def test_the_first_page_is_under_300_kb_transferred(
    web: WebServer, browser: Any, console: Console
) -> None:
    page = await new_page(browser, console)
    responses: list[Any] = []
    page.on("response", lambda response: responses.append(response))
    await sign_in(page, web, "alice")  # the sign-in page, then the projects page
    await page.wait_for_load_state("networkidle")
    transferred = 0
    for response in responses:
        sizes = await response.request.sizes()
        transferred += sizes["responseBodySize"] + sizes["responseHeadersSize"]
    print(f"first page: {len(responses)} responses, {transferred} bytes transferred")
    assert 0 < transferred < FIRST_PAGE_BUDGET
    assert not any("xterm" in response.url for response in responses)  # only with a terminal
    assert console.problems() == []


async def test_the_session_survives_a_reload_and_signing_out_ends_it(
    web: WebServer, browser: Any, console: Console
) -> None:
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    await page.reload()
    await expect(page.get_by_role("heading", name="Projects", level=1)).to_be_visible()
    cookies = await page.context.cookies()
    assert [c["name"] for c in cookies] == ["pvm_session"]
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("Agent token")).to_be_visible()
    # The old cookie value is worth nothing any more, even sent again by hand.
    async with httpx.AsyncClient(base_url=web.base, timeout=60) as client:
        replay = await client.get(
            "/api/v1/projects", headers={"Cookie": f"pvm_session={cookies[0]['value']}"}
        )
    assert replay.status_code == 401
    assert console.problems() == []


async def test_commands_run_from_the_page_and_the_history_filters_by_agent_and_status(
    web: WebServer, browser: Any, console: Console, artifacts: Path
) -> None:
    project_id = await web.project("history-demo", {"bob": "read_write"})
    async with http_client(web.mcp_url, web.tokens["bob"]) as bob:
        await call(bob, "run_command", project_id=project_id, command="echo from-bob")
        await call(bob, "run_command", project_id=project_id, command="exit 3")
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    await open_project(page, web, project_id, "commands")

    await page.get_by_label("Run a command in the VM").fill("echo from-the-page; echo oops >&2")
    await page.get_by_role("button", name="Run", exact=True).click()
    output = page.locator(".outputs pre.output")
    await expect(output).to_contain_text("from-the-page")
    await expect(output.locator(".stderr")).to_have_text("oops\n")
    await expect(page.locator(".outputs .output-status")).to_contain_text("completed")

    history = page.locator("table.history tbody tr")
    await expect(history).to_have_count(3)
    await page.get_by_label("Agent").select_option("bob")
    await expect(history).to_have_count(2)
    await expect(page.locator("table.history")).not_to_contain_text("from-the-page")
    await page.get_by_label("Status").select_option("completed")
    await expect(history).to_have_count(2)  # a non-zero exit is still a completed run
    await history.filter(has_text="exit 3").get_by_role("button").click()
    await expect(page.locator(".outputs .output-status")).to_contain_text("exit code 3")
    await screenshot(page, artifacts, "commands")
    assert console.problems() == []


async def test_the_queue_shows_running_and_waiting_commands_with_positions_and_cancels(
    web: WebServer, browser: Any, console: Console, artifacts: Path
) -> None:
    project_id = await web.project("queue-demo", {"bob": "read_write"})
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    # One command at a time, set through the settings form.
    await open_project(page, web, project_id, "settings")
    await page.get_by_label("Commands at once").fill("1")
    await page.get_by_role("button", name="Save settings").click()
    await expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
    async with web.rest("alice") as alice:
        settings = (await alice.get(f"/projects/{project_id}")).json()["settings"]
    assert settings["max_concurrent_executions"] == 1

    async with http_client(web.mcp_url, web.tokens["bob"]) as bob:
        blocker = await call(
            bob, "run_command", project_id=project_id, wait_s=0, keep_stdin_open=True,
            command="read line; echo released",
        )  # fmt: skip
        waiting = await call(
            bob, "run_command", project_id=project_id, wait_s=0, command="echo second"
        )
        await page.get_by_role("link", name="Queue").click()
        rows = page.locator("table.queue tbody tr")
        await expect(rows).to_have_count(2)
        await expect(rows.nth(0)).to_contain_text("running")
        await expect(rows.nth(1)).to_contain_text("#1 in queue")
        await expect(page.locator(".panel-queue")).to_contain_text("1 running (at most 1 at once)")
        await screenshot(page, artifacts, "queue")

        await rows.nth(1).get_by_role("button", name="Cancel echo second").click()
        await expect(rows).to_have_count(1)
        await call(bob, "send_input", execution_id=blocker["execution_id"], data="go\n")
        await expect(rows).to_have_count(0)
        cancelled = await call(bob, "read_command_output", execution_id=waiting["execution_id"])
    assert cancelled["status"] == "cancelled"
    assert console.problems() == []


async def test_the_live_feed_resumes_after_the_connection_drops_without_gaps_or_repeats(
    web: WebServer, browser: Any, console: Console
) -> None:
    project_id = await web.project("resume-demo", {"bob": "read_write"})
    page = await new_page(browser, console)
    sockets: list[Any] = []

    async def through(route: Any) -> None:  # a real connection to the server, held by the test
        route.connect_to_server()
        sockets.append(route)

    await page.route_web_socket(re.compile(r"/ws$"), through)
    await sign_in(page, web, "alice")
    await open_project(page, web, project_id, "activity")
    feed = page.locator("ol.feed")
    async with web.rest("bob") as bob:
        await bob.put(f"/projects/{project_id}/files/before.txt", content=b"1")
        await expect(feed).to_contain_text("wrote before.txt")

        await sockets[-1].close(code=1012, reason="dropped by the test")
        await expect(page.locator(".connection")).to_contain_text("offline")
        for name in ("during-1.txt", "during-2.txt", "during-3.txt"):
            await bob.put(f"/projects/{project_id}/files/{name}", content=b"2")
        await expect(page.locator(".connection")).to_have_text("live")
        await bob.put(f"/projects/{project_id}/files/after.txt", content=b"3")
        await expect(feed).to_contain_text("wrote after.txt")
    assert len(sockets) == 2
    for name in ("before.txt", "during-1.txt", "during-2.txt", "during-3.txt", "after.txt"):
        await expect(feed.locator("li", has_text=f"wrote {name}")).to_have_count(1)
    order = await feed.locator("li .what").all_inner_texts()
    writes = [text.split()[1] for text in order if text.startswith("wrote ")]
    assert writes == ["after.txt", "during-3.txt", "during-2.txt", "during-1.txt", "before.txt"]
    assert console.problems() == []


async def test_a_busy_projects_feed_starts_with_its_latest_events(
    web: WebServer, browser: Any, console: Console
) -> None:
    project_id = await web.project("busy-demo")
    async with web.rest("alice") as alice:
        for number in range(320):
            written = await alice.put(f"/projects/{project_id}/files/f{number}.txt", content=b"x")
            assert written.status_code == 201
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    await open_project(page, web, project_id, "activity")
    feed = page.locator("ol.feed li")
    await expect(feed.first).to_contain_text("wrote f319.txt")
    count = await feed.count()
    assert 250 <= count <= 300
    await expect(page.locator("ol.feed")).not_to_contain_text("created the project")
    assert console.problems() == []


async def test_a_project_is_stopped_started_and_deleted_from_the_projects_page(
    web: WebServer, browser: Any, console: Console
) -> None:
    await web.project("lifecycle-demo")
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    row = page.locator("tr", has_text="lifecycle-demo")
    await row.get_by_role("button", name="Stop lifecycle-demo").click()
    await expect(row.locator("td[data-label='Status']")).to_contain_text("stopped")
    await expect(row.locator("td[data-label='CPU']")).to_contain_text(
        "figures appear while it runs"
    )
    await row.get_by_role("button", name="Start lifecycle-demo").click()
    await expect(row.locator("td[data-label='Status']")).to_contain_text("running")

    await row.get_by_role("button", name="Delete lifecycle-demo").click()
    dialog = page.get_by_role("dialog", name="Delete lifecycle-demo?")
    await expect(dialog).to_contain_text("cannot be undone")
    await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()  # the safe default
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(row).to_be_visible()
    await row.get_by_role("button", name="Delete lifecycle-demo").click()
    await dialog.get_by_role("button", name="Delete project").click()
    await expect(row).to_be_hidden()
    async with web.rest("alice") as alice:
        assert (await alice.get("/projects")).json()["projects"] == []
    assert console.problems() == []


async def test_a_page_whose_session_ended_asks_to_sign_in_again(
    web: WebServer, browser: Any, console: Console
) -> None:
    page = await new_page(browser, console)
    await sign_in(page, web, "alice")
    # The session ends elsewhere (another tab signed out, or it expired).
    cookie = (await page.context.cookies())[0]["value"]
    csrf = await page.evaluate("() => fetch('/ui/session').then(r => r.json())")
    async with httpx.AsyncClient(base_url=web.base, timeout=60) as client:
        ended = await client.delete(
            "/ui/session",
            headers={"Cookie": f"pvm_session={cookie}", "X-CSRF-Token": csrf["csrf_token"]},
        )
    assert ended.status_code == 204
    await page.get_by_role("button", name="Refresh").click()
    await expect(page.get_by_label("Agent token")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("Your session ended")
    # The browser logs the refused request itself.
    assert console.problems("status of 401") == []
