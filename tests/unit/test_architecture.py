"""Dependencies point inward: the domain imports only the standard library and itself; the service layer is
handed what it needs, never reads the settings and reaches storage only through its ports (no SQL, no
adapters); the API reads through the service's read models and never touches storage; drivers and simulators
never import the gateway."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("." * node.level + (node.module or ""))
            elif node.module:
                names.add(node.module)
    return names


def _files(folder: str) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}"
    return files


@pytest.mark.parametrize("path", _files("gateway/domain"), ids=lambda p: p.name)
def test_domain_imports_only_stdlib_and_itself(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        allowed = name.startswith("gateway.domain") or top in sys.stdlib_module_names or top == "__future__"
        assert allowed, f"{path.relative_to(ROOT)} imports {name}"


@pytest.mark.parametrize("path", _files("gateway/service"), ids=lambda p: str(p.relative_to(ROOT)))
def test_service_does_not_read_the_settings(path: Path) -> None:
    for name in _imports(path):
        assert name != "gateway.settings" and not name.startswith("gateway.settings."), \
            f"{path.relative_to(ROOT)} imports {name}: bootstrap hands the service what it needs"


@pytest.mark.parametrize("path", _files("gateway/service"), ids=lambda p: str(p.relative_to(ROOT)))
def test_service_reaches_storage_only_through_its_ports(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        assert top not in ("sqlalchemy", "aiosqlite", "asyncpg", "sqlite3") and not name.startswith("gateway.adapters"), \
            f"{path.relative_to(ROOT)} imports {name}: SQL lives in gateway.adapters, behind service.ports"


@pytest.mark.parametrize("path", _files("gateway/api"), ids=lambda p: str(p.relative_to(ROOT)))
def test_api_does_not_touch_storage(path: Path) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        assert top != "sqlalchemy" and not name.startswith("gateway.adapters"), \
            f"{path.relative_to(ROOT)} imports {name}: routes read through service.views"
    text = path.read_text(encoding="utf-8")
    assert ".writer" not in text and ".uow(" not in text, f"{path.relative_to(ROOT)} reaches into the service"


@pytest.mark.parametrize("path", _files("drivers") + _files("simulators"), ids=lambda p: str(p.relative_to(ROOT)))
def test_drivers_and_simulators_do_not_import_gateway(path: Path) -> None:
    for name in _imports(path):
        assert name.split(".")[0] != "gateway", f"{path.relative_to(ROOT)} imports {name}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sqlalchemy\nfrom gateway.adapters import tables\n")
    assert {"sqlalchemy", "gateway.adapters"} <= _imports(bad)
