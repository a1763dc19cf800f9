"""The README and the docs cannot go stale: every ``python`` block in them runs, and the
``text`` block that follows one introduced by "prints" is what it printed.

Each block runs as its own script in a fresh interpreter, in a temporary
directory, against a redis-server this test starts: ``redis://localhost:6379``
in a block is replaced by that server's URL (the suite never touches a server it
did not start). In an expected output, a line ``...`` stands for any number of
lines, and ``…`` within a line for any text (a timing, say).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sharded_queue.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
"""The README and every page of the documentation site."""
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def blocks(page: Path = README) -> list[tuple[int, str, str | None]]:
    """(line, code, expected output or None) of each python block of ``page``."""
    text = page.read_text()
    found = list(FENCE.finditer(text))
    result = []
    for index, match in enumerate(found):
        if match.group(1) != "python":
            continue
        expected = None
        following = found[index + 1] if index + 1 < len(found) else None
        if following is not None and following.group(1) == "text":
            between = text[match.end() : following.start()]
            if re.fullmatch(r"\s*prints\b[^\n]*:?\s*", between):
                expected = following.group(2)
        result.append((text.count("\n", 0, match.start()) + 1, match.group(2), expected))
    return result


def matches(expected: str, actual: str) -> bool:
    """``actual`` output against the README's: ``...`` lines skip lines, ``…`` skips text."""
    patterns = []
    for line in expected.rstrip("\n").split("\n"):
        if line.strip() == "...":
            patterns.append(r"(?:[^\n]*\n)*?")
        else:
            patterns.append(".*?".join(re.escape(part) for part in line.rstrip().split("…")) + r"[ \t]*\n")
    return re.fullmatch("".join(patterns), actual.rstrip("\n") + "\n") is not None


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> RedisServer:
    from tests.conftest import need_redis_server

    need_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("readme-redis"))
    yield server  # type: ignore[misc]
    server.stop()


CASES = [(page, line, code, expected) for page in PAGES for line, code, expected in blocks(page)]


@pytest.mark.parametrize(
    ("page", "line", "code", "expected"),
    CASES,
    ids=[f"{page.stem}-line{line}" for page, line, _, _ in CASES],
)
def test_readme_block_runs_and_prints_what_it_says(
    page: Path, line: int, code: str, expected: str | None, readme_server: RedisServer, tmp_path: Path
) -> None:
    where = f"{page.relative_to(ROOT)} block at line {line}"
    script = tmp_path / f"{page.stem}_line_{line}.py"
    script.write_text(code.replace("redis://localhost:6379", f"redis://127.0.0.1:{readme_server.port}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUE_")}
    env.update(PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"{where} failed:\n{run.stderr[-3000:]}"
    if expected is not None:
        assert matches(expected, run.stdout), f"{where} printed:\n{run.stdout}"
