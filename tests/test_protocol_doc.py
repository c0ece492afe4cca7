"""docs/protocol.md documents everything protocol/ defines: commands, their arguments, error codes."""
from __future__ import annotations

import re

from protocol import COMMANDS, ErrorCode
from protocol.config import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def _table_rows() -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z_]+)` \|.*$", DOC, re.M)}


def test_every_command_has_a_section_and_a_row():
    rows = _table_rows()
    missing = [name for name in COMMANDS if f"### `{name}`" not in DOC or name not in rows]
    assert not missing, f"commands missing from docs/protocol.md: {missing}"


def test_every_argument_is_in_its_row():
    rows = _table_rows()
    for name, command in COMMANDS.items():
        for arg in command.args:
            assert f"`{arg}" in rows[name], f"{name}: argument {arg} not documented"


def test_every_error_code_is_documented():
    missing = [code.value for code in ErrorCode if f"| `{code.value}` |" not in DOC]
    assert not missing, f"error codes missing from docs/protocol.md: {missing}"


def test_no_documented_command_is_unknown():
    sections = set(re.findall(r"^### `([a-z_]+)`$", DOC, re.M))
    assert sections - set(COMMANDS) == set(), "documented commands that do not exist"
