"""The dashboard: its endpoints in-process (httpx on the ASGI app, embedded fakeredis), its actions'
guard (``--allow-actions`` and the token), and ``sharded-queue dashboard`` as a real subprocess on a
redis-server with a password that neither its answers nor its log ever show."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd
import pytest

from sharded_queue import Queue, Settings, Worker
from sharded_queue.cli import main
from sharded_queue.dashboard import create_app
from sharded_queue.dashboard.app import plain
from sharded_queue.stats import COLUMNS
from sharded_queue.testing import RedisServer, drain, free_port, fresh_queue, wait_until
from tests.dashboard_support import (
    ROOT,
    SECRET,
    TOKEN,
    DashboardProcess,
    Gated,
    Reminder,
    cli_env,
    get_json,
    request,
    secured_redis,
)

_prefixes = itertools.count()


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[Queue]:
    """One dead letter, 3 threads x 2 waiting, one recurring request; the app's own Queue knows no class."""
    async with fresh_queue(settings) as queue:
        await queue.register(Gated, [1, -1])
        await drain(Worker(queue, handlers=[Gated]))
        await queue.register(Gated, *[[thread, seq] for seq in range(2) for thread in range(3)])
        await queue.register(Reminder, {"user": 7}, recurrent="0 9 * * *")
        yield Queue(queue.storage, settings=settings)


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")  # type: ignore[arg-type]


async def test_endpoints_show_what_the_queue_methods_return(queue: Queue) -> None:
    async with client(create_app(queue)) as http:
        info = (await http.get("/api/info")).json()
        assert info == {"storage": "embedded fakeredis", "prefix": "sq", "actions": []}
        stats = (await http.get("/api/stats")).json()
        assert stats["columns"] == list(COLUMNS)
        frame = await queue.stats()
        assert [(r["handler"], r["thread"], r["order"], r["depth"], r["dead"]) for r in stats["rows"]] == [
            (r.handler, r.thread, r.order, r.depth, r.dead) for r in frame.itertuples()
        ]
        assert [r["depth"] for r in stats["rows"] if r["handler"] == "dash:gated"] == [2, 2, 2, 6]
        letters = (await http.get("/api/dead-letters/dash:gated")).json()
        assert (letters["handler"], letters["count"], len(letters["rows"])) == ("dash:gated", 1, 1)
        (letter,) = letters["rows"]
        assert (letter["thread"], letter["error_type"], letter["attempts"]) == ("1", "ValueError", 1)
        assert "ValueError: poison request [[1, -1]]" in letter["traceback"] and letter["payload"].endswith(",[1,-1]]")
        assert (await http.get("/api/dead-letters/nobody:ever")).json() == {
            "handler": "nobody:ever",
            "count": 0,
            "rows": [],
        }
        for limit in ("0", "1001", "many"):
            assert (await http.get(f"/api/dead-letters/dash:gated?limit={limit}")).status_code == 400
        schedules = (await http.get("/api/schedules")).json()
        assert schedules["columns"] == ["handler", "request", "thread", "order", "every", "next_at"]
        (schedule,) = schedules["rows"]
        assert schedule["handler"] == "dash:reminder" and schedule["request"] == {"user": 7}
        assert schedule["every"] == "0 9 * * *" and datetime.fromtimestamp(schedule["next_at"], UTC).hour == 9


async def test_workers_endpoint_shows_live_workers_and_the_storage_clock(queue: Queue) -> None:
    worker = Worker(queue, handlers=[Reminder])  # nothing due: it idles, heartbeating
    loop = asyncio.create_task(worker.loop())
    async with client(create_app(queue)) as http:
        try:
            await wait_until(lambda: _worker_count(http, 1), timeout=10)
            workers = (await http.get("/api/workers")).json()
        finally:
            worker.stop()
            await loop
        (row,) = workers["rows"]
        assert row["id"] == worker.id and row["handlers"] == ["dash:reminder"] and row["loops"] == 1
        assert row["started_at"] <= row["heartbeat_at"] <= workers["now"]
        assert workers["columns"][:2] == ["id", "handlers"]
        await wait_until(lambda: _worker_count(http, 0), timeout=10)  # a stopped worker leaves at once


async def _worker_count(http: httpx.AsyncClient, count: int) -> bool:
    return len((await http.get("/api/workers")).json()["rows"]) == count


async def test_actions_are_refused_without_allow_actions_whatever_the_token(queue: Queue) -> None:
    async with client(create_app(queue, token=TOKEN)) as http:
        for path in ("/api/dead-letters/dash:gated/requeue", "/api/dead-letters/dash:gated/purge"):
            for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
                refused = await http.post(path, headers=headers)
                assert refused.status_code == 403 and "--allow-actions" in refused.json()["error"]
    assert await queue.dead_letter_count("dash:gated") == 1


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Basic {TOKEN}",
        TOKEN,
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
    ],
)
async def test_actions_without_the_right_bearer_token_are_refused(queue: Queue, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with client(create_app(queue, allow_actions=True, token=TOKEN)) as http:
        refused = await http.post("/api/dead-letters/dash:gated/purge", headers=headers)
    assert refused.status_code == 403
    assert "Authorization: Bearer <token>" in refused.json()["error"] and TOKEN not in refused.text
    assert await queue.dead_letter_count("dash:gated") == 1


async def test_actions_with_the_token_requeue_and_purge_by_handler_name(queue: Queue) -> None:
    bearer = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
    async with client(create_app(queue, allow_actions=True, token=TOKEN)) as http:
        assert (await http.get("/api/info")).json()["actions"] == ["requeue", "purge", "pause", "resume"]
        assert (await http.get("/api/dead-letters/dash:gated/requeue")).status_code == 405  # POST only
        requeued = await http.post("/api/dead-letters/dash:gated/requeue", headers=bearer)
        assert (requeued.status_code, requeued.json()) == (200, {"requeued": 1})
        assert await Queue(queue.storage).pending(Gated) == 7
        await drain(Worker(queue, handlers=[Gated]))  # fails again
        assert (await http.post("/api/dead-letters/dash:gated/purge", headers=bearer)).json() == {"purged": 1}
    assert await queue.dead_letter_count("dash:gated") == 0


async def test_actions_pause_and_resume_a_thread_by_name(queue: Queue) -> None:
    """A thread paused from the dashboard is paused (`Queue.paused`, stats' column); resumed, it is not."""
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with client(create_app(queue, token=TOKEN)) as http:
        assert (await http.post("/api/threads/dash:gated/1/pause", headers=bearer)).status_code == 403
    async with client(create_app(queue, allow_actions=True, token=TOKEN)) as http:
        paused = await http.post("/api/threads/dash:gated/1/pause", headers=bearer)
        assert (paused.status_code, paused.json()) == (200, {"paused": "1"})
        assert await queue.paused("dash:gated") == ["1"]
        stats = (await http.get("/api/stats")).json()
        rows = [row for row in stats["rows"] if row["handler"] == "dash:gated" and row["thread"] is not None]
        assert "paused" in stats["columns"] and rows
        assert all(row["paused"] == (row["thread"] == "1") for row in rows)
        assert (await http.post("/api/threads/dash:gated/1/resume", headers=bearer)).json() == {"resumed": "1"}
        assert await queue.paused("dash:gated") == []


def test_actions_without_a_token_cannot_be_enabled() -> None:
    for token in (None, ""):
        with pytest.raises(ValueError, match="needs a token"):
            create_app(fresh_queue(), allow_actions=True, token=token)


async def test_page_and_its_files_are_served_with_a_strict_policy(queue: Queue) -> None:
    async with client(create_app(queue, allowed_hosts=["127.0.0.1", "localhost"])) as http:
        page = await http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="static/dashboard.js" defer></script>' in page.text and '<table id="threads">' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        script = await http.get("/static/dashboard.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert "innerHTML" not in script.text  # what storage holds is drawn as text
        assert (await http.get("/static/dashboard.css")).status_code == 200
        assert (await http.get("/static/nothing.js")).status_code == 404
        assert (await http.get("/api/info", headers={"Host": "localhost:8000"})).status_code == 200
        assert (await http.get("/api/info", headers={"Host": "rebound.example"})).status_code == 400


async def test_a_storage_failure_answers_503_with_the_error() -> None:
    down = Queue(f"redis://127.0.0.1:{free_port()}/0", settings=Settings(storage_timeout=2))
    async with down, client(create_app(down)) as http:
        for path in ("/api/stats", "/api/workers", "/api/dead-letters/dash:gated"):
            failed = await http.get(path)
            assert failed.status_code == 503 and failed.json()["error"].startswith("storage: "), path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (np.int64(3), 3),
        (np.float64(1.5), 1.5),
        (float("nan"), None),
        (math.inf, None),
        (None, None),
        (pd.NaT, None),
        (pd.Timestamp(1_700_000_000, unit="s", tz="UTC"), 1_700_000_000.0),
        (["a/0", np.int64(1)], ["a/0", 1]),
        ({"user": np.int64(7)}, {"user": 7}),
        ("text", "text"),
    ],
)
def test_cells_become_plain_json(value: object, expected: object) -> None:
    assert plain(value) == expected


def test_the_token_variable_is_not_taken_for_a_misspelt_setting() -> None:
    Settings.from_env({"QUEUE_DASHBOARD_TOKEN": TOKEN})  # warnings are errors in this suite


# --- the command, as a subprocess -----------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.conftest import need_redis_server

    need_redis_server()
    server: RedisServer
    server, url = secured_redis(tmp_path_factory.mktemp("dashboard-redis"))
    yield url
    server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_command_serves_until_a_signal_and_never_shows_credentials(secured: str, sig: int) -> None:
    prefix = f"dash{next(_prefixes)}"
    async with Queue(secured, settings=Settings(key_prefix=prefix, retry_attempts=1)) as queue:
        await queue.register(Gated, [0, -1])
        await drain(Worker(queue, handlers=[Gated]))
        await queue.register(Gated, *[[thread, 0] for thread in range(4)])
    env = cli_env(secured, prefix, QUEUE_DASHBOARD_TOKEN=TOKEN)
    dashboard = DashboardProcess(env, "--url", secured, "--allow-actions")
    try:
        base = dashboard.base
        shown = [request(base + path)[1] for path in ("/", "/static/dashboard.js", "/api/workers", "/api/schedules")]
        shown += [json.dumps(get_json(base + path)) for path in ("/api/info", "/api/dead-letters/dash:gated")]
        stats = get_json(base + "/api/stats")
        assert [row["depth"] for row in stats["rows"]] == [1, 1, 1, 1, 4]
        assert get_json(base + "/api/info")["storage"] == secured.replace(SECRET, "***")
        refused = request(base + "/api/dead-letters/dash:gated/purge", "POST", {"Authorization": "Bearer nope"})
        done = request(base + "/api/dead-letters/dash:gated/purge", "POST", {"Authorization": f"Bearer {TOKEN}"})
        assert refused[0] == 403 and done == (200, '{"purged":1}')
        shown += [json.dumps(stats), refused[1], done[1]]
    finally:
        code, log = dashboard.stop(sig)
    assert code == 0, log
    assert "redis://:***@127.0.0.1" in log and "refused purge dash:gated" in log and "purge dash:gated from" in log
    for text in [*shown, log]:
        assert SECRET not in text and TOKEN not in text


def test_allow_actions_without_a_token_refuses_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--url", "redis://127.0.0.1:1/0", "--allow-actions"]) == 2
    assert "--allow-actions needs a token: set QUEUE_DASHBOARD_TOKEN" in capsys.readouterr().err


def test_no_url_refuses_to_start(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from sharded_queue import settings

    monkeypatch.setattr(settings, "storage_url", None)
    assert main(["dashboard"]) == 2
    assert "no storage URL" in capsys.readouterr().err


def test_without_the_extra_one_line_names_it_and_exits_2() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; from sharded_queue.cli import main; sys.exit(main(['dashboard']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "sharded-queue dashboard: error: needs the dashboard extra (starlette is missing): "
        "pip install 'sharded-queue[dashboard]'"
    ]


def test_bad_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["dashboard", "--port", "70000"])
    assert exit_info.value.code == 2 and "must be a TCP port" in capsys.readouterr().err


def test_the_readme_and_the_docs_show_the_screenshot() -> None:
    assert (ROOT / "docs/img/dashboard.png").read_bytes().startswith(b"\x89PNG")
    assert "](docs/dashboard.md)" in (ROOT / "README.md").read_text()  # the README links the page
    assert "](img/dashboard.png)" in (ROOT / "docs/dashboard.md").read_text()
