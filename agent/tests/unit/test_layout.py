"""The agent's import rules (docs/architecture.md, "Layers and import rules"), checked on the source.

Services meet only through the backend and the network, CLIs only through the API,
and decision code imports no service. Every module of the agent is parsed and each
import is resolved to a module of the agent, so the rules stay true as code moves.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "gatehouse"

SERVICES = ("auth", "proxy", "node", "tunnel")
#: What each part may not import (a prefix matches the package and everything in it).
FORBIDDEN = {
    "auth": ("gatehouse.proxy", "gatehouse.node", "gatehouse.tunnel", "gatehouse.member", "gatehouse.cli"),
    "proxy": ("gatehouse.auth", "gatehouse.node", "gatehouse.tunnel", "gatehouse.cli"),
    "node": ("gatehouse.auth", "gatehouse.proxy", "gatehouse.tunnel", "gatehouse.cli"),
    "tunnel": ("gatehouse.auth", "gatehouse.proxy", "gatehouse.node", "gatehouse.cli"),
    "member": ("gatehouse.auth", "gatehouse.proxy", "gatehouse.node", "gatehouse.tunnel", "gatehouse.cli",
               "gatehouse.backend"),
    # CLIs reach services only through the API.
    "cli": ("gatehouse.auth", "gatehouse.proxy", "gatehouse.node", "gatehouse.tunnel", "gatehouse.member",
            "gatehouse.backend", "gatehouse.process"),
    # Pure decision code: no service, no storage, no network, no CLI.
    "access": ("gatehouse.auth", "gatehouse.proxy", "gatehouse.node", "gatehouse.tunnel", "gatehouse.member",
               "gatehouse.backend", "gatehouse.cli", "gatehouse.client", "gatehouse.process"),
}
for pure in ("labels", "traits", "rolemap", "durations", "claims"):
    FORBIDDEN[pure] = FORBIDDEN["access"]
FORBIDDEN["resources"] = FORBIDDEN["access"]
FORBIDDEN["backend"] = tuple(p for p in FORBIDDEN["access"] if p != "gatehouse.backend")
#: `gatehouse start` is the daemon's launcher, not a client: it runs process.py, the one place
#: that builds every service (the composition root).
EXEMPT = {"gatehouse.cli.daemon": ("gatehouse.process",)}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    out = {}
    for root, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                path = Path(root) / name
                out[_module_name(path)] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` names (relative imports resolved against MODULE)."""
    if not node.level:
        return node.module or ""
    is_package = any(module + "." in other for other in MODULES)
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in MODULE, lazy ones included."""
    out = []
    for node in ast.walk(MODULES[module]):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            names = [alias.name for alias in node.names]
            # `from . import keys` imports the module gatehouse.auth.keys
            submodules = [n for n in names if f"{target}.{n}" in MODULES]
            out += [(f"{target}.{n}", []) for n in submodules]
            out.append((target, [n for n in names if n not in submodules]))
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers(module):
    forbidden = FORBIDDEN.get(_part(module), ())
    bad = sorted({target for target, _ in imports(module)
                  if any(target == f or target.startswith(f + ".") for f in forbidden)
                  and target not in EXEMPT.get(module, ())})
    assert not bad, f"{module} imports {', '.join(bad)}; see 'Layers and import rules' in docs/architecture.md"


def test_wire_is_the_bottom_layer():
    assert not [t for t, _ in imports("gatehouse.wire") if t.startswith("gatehouse")]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_from_other_modules(module):
    private = [f"{target}.{name}" for target, names in imports(module) if target.startswith("gatehouse")
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, f"{module} imports private names {private}; make them public where they belong"


def test_one_duration_parser():
    parsers = sorted(f"{module}.{node.name}" for module, tree in MODULES.items() for node in ast.walk(tree)
                     if isinstance(node, ast.FunctionDef) and node.name in ("parse_duration", "parse_ttl"))
    assert parsers == ["gatehouse.durations.parse_duration", "gatehouse.durations.parse_ttl"]


def test_the_rules_see_real_imports():
    """The checker itself: it finds the imports a service really has (so the rules cannot pass vacuously)."""
    node_imports = {t for t, _ in imports("gatehouse.node.server")}
    assert {"gatehouse.member.context", "gatehouse.node.session", "gatehouse.wire"} <= node_imports
    assert "gatehouse.auth.keys" in {t for t, _ in imports("gatehouse.auth.service")}
    assert len(MODULES) > 40
