"""The console's scripts share one global scope (classic <script>s): a name declared at the top level of two of
them stops the later script at load ("Identifier has already been declared") or silently replaces the earlier
function. Each console module keeps its top-level names to itself."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

STATIC = Path(__file__).resolve().parents[2] / "services" / "city" / "static"
DECLARATION = re.compile(
    r"^(?:const|let|var|class|function|async\s+function)\s*\*?\s*([A-Za-z_$][\w$]*)", re.M
)


def _console_scripts() -> list[Path]:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    names = re.findall(r'<script src="/static/([^"]+)"', html)
    return [STATIC / n for n in names if not n.startswith("vendor/")]


def test_the_console_loads_every_own_script_it_ships():
    loaded = {p.name for p in _console_scripts()}
    shipped = {p.name for p in STATIC.glob("*.js")}
    assert loaded == shipped


def test_no_top_level_name_is_declared_by_two_console_scripts():
    where: dict[str, list[str]] = defaultdict(list)
    for script in _console_scripts():
        for name in set(DECLARATION.findall(script.read_text(encoding="utf-8"))):
            where[name].append(script.name)
    assert {n: files for n, files in where.items() if len(files) > 1} == {}


def test_the_check_finds_a_name_declared_twice(tmp_path):
    a = "const fill = 1;\nfunction other() {}\n"
    b = "function fill(node) {}\n"
    assert set(DECLARATION.findall(a)) & set(DECLARATION.findall(b)) == {"fill"}
