"""The dashboard in a real headless browser: Debian's Chromium driven by Playwright (never a
downloaded browser), against ``sharded-queue dashboard`` and ``sharded-queue worker`` subprocesses
on a redis-server with a password.

The page shows 20 waiting requests, then a worker holding two threads while their batches are held
back (the screenshot), then, without a reload, depth 0 once the worker performed them; the token
typed into the page requeues the dead letter. ``DASHBOARD_SCREENSHOT=docs/img/dashboard.png`` also
saves the screenshot where the docs show it (every run saves one in its temporary directory).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from sharded_queue import Queue, Settings, Worker
from sharded_queue.testing import drain
from tests.conftest import CI, need_redis_server
from tests.dashboard_support import (
    ROOT,
    SECRET,
    TOKEN,
    DashboardProcess,
    Gated,
    Reminder,
    cli_env,
    request,
    secured_redis,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [  # root needs --no-sandbox; the rest keeps Chromium off the (closed) network
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000
HELD_TWO = re.compile(r"^dash:gated/\d, dash:gated/\d$")  # which two threads: the coordinator's choice
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need_redis_server()
    server, url = secured_redis(tmp_path_factory.mktemp("browser-redis"))
    yield url
    server.stop()


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    """A page of a Chromium with a fresh profile."""
    if not os.path.exists(CHROMIUM):
        if CI:
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "profile",
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            yield context.pages[0] if context.pages else await context.new_page()
        finally:
            await context.close()


async def test_the_page_follows_the_queue_live_and_acts_with_the_token(
    secured: str, page: Page, tmp_path: Path
) -> None:
    prefix = f"browser{next(_prefixes)}"
    async with Queue(secured, settings=Settings(key_prefix=prefix)) as queue:
        await queue.register(Gated, [3, -7])
        await drain(Worker(queue, handlers=[Gated]))  # a dead letter, with its traceback
        await queue.register(Gated, *[[thread, seq] for seq in range(5) for thread in range(4)])
        await queue.register(Reminder, {"user": 7}, recurrent="0 9 * * *")
    gate = tmp_path / "gate"
    env = cli_env(secured, prefix, QUEUE_DASHBOARD_TOKEN=TOKEN, DASHBOARD_GATE=str(gate))
    dashboard = DashboardProcess(env, "--url", secured, "--allow-actions")
    worker = None
    try:
        await page.goto(dashboard.base)
        depth = page.locator('#handlers tr[data-handler="dash:gated"] td[data-column="depth"]')
        await expect(depth).to_have_text("20", timeout=WAIT_MS)

        command = [sys.executable, "-m", "sharded_queue", "worker", "tests.dashboard_support:Gated"]
        worker = subprocess.Popen([*command, "--burst", "--loops", "2"], cwd=ROOT, env=env, text=True)
        held = page.locator('#threads td[data-column="holder"]:not(:empty)')
        await expect(held).to_have_count(2, timeout=WAIT_MS)  # two loops hold a thread each, batches held back
        await expect(page.locator('#workers td[data-column="held"]')).to_have_text(HELD_TWO, timeout=WAIT_MS)
        await expect(page.locator("#dead-letters tr[data-thread='3']")).to_have_count(1)
        await expect(page.locator("#schedules tbody tr")).to_have_count(1)
        await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
        if os.environ.get("DASHBOARD_SCREENSHOT"):
            shutil.copy(tmp_path / "dashboard.png", ROOT / os.environ["DASHBOARD_SCREENSHOT"])

        gate.touch()  # the worker performs everything and exits
        await expect(depth).to_have_text("0", timeout=WAIT_MS)  # no reload: the page polls
        assert worker.wait(timeout=30) == 0
        await expect(page.locator("#workers tr[data-worker]")).to_have_count(0, timeout=WAIT_MS)

        await page.fill("#token", TOKEN)
        await page.click('#dead-letters button[data-action="requeue"]')
        await expect(page.locator("#action-result")).to_have_text("dash:gated: requeued 1", timeout=WAIT_MS)
        await expect(page.locator("#dead-letters p.empty")).to_have_text("no dead letters", timeout=WAIT_MS)
        await expect(depth).to_have_text("1", timeout=WAIT_MS)  # the requeued request waits again
        html = await page.content()
        answers = [request(dashboard.base + path)[1] for path in ("/api/info", "/api/stats", "/api/workers")]
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        code, log = dashboard.stop()
    assert code == 0, log
    assert "redis://:***@" in html and "redis://:***@" in log
    for text in [html, *answers, log]:
        assert SECRET not in text and TOKEN not in text
