"""``make docs``: build the documentation site with warnings as errors (``mkdocs build --strict``).

The notebooks are executed at build time (mkdocs-jupyter), against a redis-server
started here on a free loopback port (as the test suite does), so that their
figures are those of a real run; the built site lands in ``build/site``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    from sharded_queue.testing import RedisServer

    env = {key: value for key, value in os.environ.items() if not key.startswith("QUEUE_")}
    env["MPLBACKEND"] = "Agg"
    with tempfile.TemporaryDirectory(prefix="sq-docs-") as directory:
        server = RedisServer(Path(directory)) if shutil.which("redis-server") else None
        if server is not None:
            env["QUEUE_STORAGE_URL"] = server.url
        try:
            command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
            return subprocess.run(command, cwd=ROOT, env=env).returncode
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
