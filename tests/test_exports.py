"""The public face: ``__all__`` and the README's API list agree, and imports stay light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import sharded_queue

README = Path(__file__).parent.parent / "README.md"


def test_all_matches_readme() -> None:
    section = README.read_text().split("## Public API", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(\w+)`", section)) - {"sharded_queue"}
    assert documented == set(sharded_queue.__all__)
    for name in sharded_queue.__all__:
        assert getattr(sharded_queue, name).__doc__, f"{name} has no docstring"


def test_import_does_not_pull_heavy_modules() -> None:
    code = "import sys, sharded_queue; print(sorted({'pandas', 'simpy', 'matplotlib', 'simulator'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_pickle_anywhere_in_the_package() -> None:
    package = Path(sharded_queue.__file__).parent
    for path in package.rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+(c?pickle|marshal|dill)\b", path.read_text(), re.M), path
