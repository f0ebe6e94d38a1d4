"""typer's private modules, and click (which typer >= 0.26 no longer uses), only in
klrank.cli._compat: `klrank --version` crashed on typer 0.15.4 when the commands imported
typer._click, which that release does not have.
"""

import ast
from pathlib import Path

import klrank.cli

CLI = Path(klrank.cli.__file__).parent


def _private(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "click" or (parts[0] == "typer" and any(p.startswith("_") for p in parts))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_only_the_compat_module_imports_click_or_private_typer() -> None:
    modules = sorted(CLI.glob("*.py"))
    assert len(modules) >= 6  # one per command, options, errors, _compat
    found = {p.name: sorted(n for n in _imports(p) if _private(n)) for p in modules}
    assert {name: names for name, names in found.items() if names} == {
        "_compat.py": found["_compat.py"]
    }
    assert found["_compat.py"]  # else the check above proves nothing


def test_the_private_check_catches_what_it_should() -> None:
    assert _private("typer._click.core")
    assert _private("click")
    assert not _private("typer.core")
    assert not _private("typer")
