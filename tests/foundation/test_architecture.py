"""The package rules of DESIGN §2: import directions, and nothing built at import time."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "billing_core", "marketplaces", "worker", "webhooks")
ALLOWED = {
    "config": set(),
    "billing_core": set(),
    "marketplaces": {"config"},
    "worker": {"billing_core", "marketplaces", "config"},
    "webhooks": {"worker", "billing_core", "marketplaces", "config"},
}
# Third-party modules billing_core may use (DESIGN §2: stdlib, SQLModel/SQLAlchemy, own modules;
# sqlglot parses metric SQL).
BILLING_THIRD_PARTY = {"sqlmodel", "sqlalchemy", "sqlglot"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_import_directions(package: str) -> None:
    """Each package imports only the packages DESIGN §2 allows it to."""
    bad = []
    for path in _modules(package):
        for name in _imports(path):
            if name in PACKAGES and name != package and name not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_billing_core_uses_only_stdlib_and_sqlmodel() -> None:
    """billing_core imports only the stdlib, SQLModel/SQLAlchemy, sqlglot and itself."""
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for path in _modules("billing_core"):
        for name in _imports(path):
            if name not in stdlib and name not in BILLING_THIRD_PARTY and name != "billing_core" and name != "__future__":
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_nothing_connects_at_import_time() -> None:
    """Importing every module builds no engine, Redis connection, SDK client or socket."""
    script = textwrap.dedent(
        f"""
        import importlib, pkgutil, socket, sys
        sys.path.insert(0, {str(ROOT)!r})
        calls = []
        def refuse(name):
            def _f(*a, **k):
                calls.append(name)
                raise RuntimeError(name + " at import time")
            return _f
        import sqlalchemy, sqlalchemy.engine, redis, boto3, requests
        sqlalchemy.create_engine = refuse("sqlalchemy.create_engine")
        sqlalchemy.engine.create_engine = refuse("sqlalchemy.create_engine")
        import sqlmodel
        sqlmodel.create_engine = refuse("sqlmodel.create_engine")
        redis.Redis.__init__ = refuse("redis.Redis")
        boto3.client = refuse("boto3.client")
        boto3.session.Session.client = refuse("boto3.Session.client")
        requests.Session.request = refuse("requests.Session.request")
        socket.socket.connect = refuse("socket.connect")
        failed = []
        for pkg in {PACKAGES!r}:
            mod = importlib.import_module(pkg)
            for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
                if ".migrations" in info.name or info.name.endswith("worker.schedule"):
                    continue
                try:
                    importlib.import_module(info.name)
                except Exception as exc:
                    failed.append(f"{{info.name}}: {{type(exc).__name__}}: {{exc}}")
        print("CALLS", calls)
        print("FAILED", failed)
        sys.exit(1 if calls or failed else 0)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
