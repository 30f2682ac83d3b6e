"""The docs point at what exists: every test file, bench script and package module that the
README, bench/RESULTS.md or the package's docstrings cite by path is in the repository, and every
test the README's promise table names is defined."""

import re

from ..conftest import REPO

CITED_PATH = re.compile(r"\b((?:test|bench|anyloc_ros|config|scripts|launch)/[\w/.-]+\.(?:py|yaml|sh|md))\b")


def _texts() -> dict[str, str]:
    out = {"README.md": (REPO / "README.md").read_text(), "bench/RESULTS.md": (REPO / "bench" / "RESULTS.md").read_text()}
    for p in (REPO / "anyloc_ros").rglob("*.py"):
        out[str(p.relative_to(REPO))] = p.read_text()
    return out


def test_every_cited_path_exists():
    missing = []
    for name, text in _texts().items():
        for path in set(CITED_PATH.findall(text)):
            if not (REPO / path).exists() and not (REPO / "anyloc_ros" / path).exists() \
                    and not (REPO / "anyloc_ros" / "core" / path).exists():
                missing.append(f"{name}: {path}")
    assert missing == []


def test_every_test_the_promise_table_names_is_defined():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## What the package promises"):readme.index("## Layout")]
    files = {p.name: p.read_text() for p in (REPO / "test").rglob("test_*.py")}
    missing = []
    for file, rest in re.findall(r"`(test_\w+\.py)((?:::\w+)?)`", table):
        if file not in files:
            missing.append(file)
        elif rest and f"def {rest[2:]}(" not in files[file]:
            missing.append(file + rest)
    for first, more in re.findall(r"`(test_\w+\.py)::\w+`((?:, `::\w+`)+)", table):
        for name in re.findall(r"`::(\w+)`", more):
            if f"def {name}(" not in files.get(first, ""):
                missing.append(f"{first}::{name}")
    assert missing == []
