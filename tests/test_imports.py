"""The import graph runs one way: no cycles; only the admin and the API import them."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trusthub_eval"
EDGES = ("trusthub_eval.admin", "trusthub_eval.api")
# Modules the REST API and the templates use beside the admin.
DOMAIN = [
    "trusthub_eval.diff",
    "trusthub_eval.display",
    "trusthub_eval.requirements",
    "trusthub_eval.throttling",
    "trusthub_eval.templatetags.trusthub_admin",
]


def in_edges(name: str) -> bool:
    return any(name == edge or name.startswith(f"{edge}.") for edge in EDGES)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports run when the module is: not those in functions or under TYPE_CHECKING."""
    statements: list[ast.stmt] = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            statements.extend(node.orelse)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            statements.extend(getattr(node, "body", []))
            statements.extend(getattr(node, "orelse", []))
            statements.extend(getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                statements.extend(handler.body)


def import_graph() -> dict[str, set[str]]:
    """Each of the app's modules -> the app's modules it imports when it is imported."""
    paths = {
        module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if "migrations" not in path.relative_to(PACKAGE).parts
    }
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = set()
        for node in top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for target in targets:
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                # A module's own packages are imported before it whatever it says: naming one
                # (``from trusthub_eval.queue import rows`` in a module of that package) adds
                # no dependency.
                if target and target != name and not name.startswith(f"{target}."):
                    graph[name].add(target)
    return graph


def test_the_app_has_no_import_cycle():
    # CycleError names the modules of the cycle.
    list(graphlib.TopologicalSorter(import_graph()).static_order())


def test_only_the_admin_and_the_api_import_the_admin_and_the_api():
    graph = import_graph()
    offenders = {
        name: sorted(target for target in targets if in_edges(target))
        for name, targets in graph.items()
        if not in_edges(name)
    }
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_the_domain_modules_load_without_the_admin_or_the_api():
    # A fresh interpreter, and an admin that autodiscovers nothing: what is loaded is only
    # what these modules import.
    script = textwrap.dedent(
        f"""
        import importlib, json, sys
        import django
        from django.conf import settings

        settings.configure(
            INSTALLED_APPS=[
                "django.contrib.admin.apps.SimpleAdminConfig",
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "rest_framework",
                "trusthub_eval",
            ]
        )
        django.setup()
        loaded = {{}}
        for name in {DOMAIN!r}:
            importlib.import_module(name)
            loaded[name] = sorted(m for m in sys.modules if m.startswith("trusthub_eval."))
        print(json.dumps(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert {name: [m for m in modules if in_edges(m)] for name, modules in loaded.items()} == {
        name: [] for name in DOMAIN
    }
