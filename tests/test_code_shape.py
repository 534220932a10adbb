"""Modules a newcomer can read: none longer than ``MAX_LINES`` without a stated reason.

A module over the limit must say why in its docstring, with a sentence containing
``REASON_MARK`` (e.g. "Longer than 600 lines because it is one table of ...").
Function complexity is ruff's job (``C90``, max-complexity 12 in pyproject.toml).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dqlitepy

MAX_LINES = 600
REASON_MARK = "longer than 600 lines because"
PACKAGE_DIR = Path(dqlitepy.__file__).resolve().parent


def oversized_without_reason(source: str) -> bool:
    """True if ``source`` is longer than the limit and its docstring gives no reason."""
    if len(source.splitlines()) <= MAX_LINES:
        return False
    docstring = ast.get_docstring(ast.parse(source)) or ""
    return REASON_MARK not in " ".join(docstring.lower().split())


def _modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_the_package_has_modules() -> None:
    assert len(_modules()) > 50


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_module_is_short_or_says_why(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert not oversized_without_reason(source), (
        f"{path.relative_to(PACKAGE_DIR)} has {len(source.splitlines())} lines: split it "
        f"along its seams or say in its docstring why it is {REASON_MARK} ..."
    )


def test_the_check_sees_a_long_module_and_accepts_its_reason() -> None:
    body = "x = 1\n" * MAX_LINES
    assert not oversized_without_reason('"""Short."""\n' + "x = 1\n" * (MAX_LINES - 1))
    assert oversized_without_reason('"""No reason given."""\n' + body)
    assert not oversized_without_reason(
        '"""One table.\n\nLonger than 600 lines because\nit is one table."""\n' + body
    )
