"""Layer arrows point one way: cli -> pipeline -> method; evaluation and training sit above pipeline and method."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bhd_app"

# Layer (package under bhd_app) -> the layers its modules must not import.
FORBIDDEN = {
    "pipeline": ("evaluation", "training", "cli"),
    "method": ("pipeline", "evaluation", "training", "cli"),
    "evaluation": ("cli", "training"),
}


def _imports(path: Path) -> set[str]:
    """Every bhd_app module that ``path`` imports, anywhere in it (inside functions too), resolved to absolute names."""
    # The package a relative import starts from: the folder, for a module and for an __init__ alike.
    package = list(path.relative_to(PACKAGE.parent).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # "from .. import evaluation" names a module, not only a function.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "bhd_app" or name.startswith("bhd_app.")}


def test_layers_point_one_way():
    violations = []
    for layer, forbidden in FORBIDDEN.items():
        paths = sorted((PACKAGE / layer).rglob("*.py"))
        assert paths, f"no modules found under bhd_app/{layer}"
        for path in paths:
            imported = _imports(path)
            for other in forbidden:
                target = f"bhd_app.{other}"
                hits = sorted(n for n in imported if n == target or n.startswith(target + "."))
                if hits:
                    violations.append(f"{path.relative_to(PACKAGE.parent)} imports {hits[0]}")
    assert not violations, "\n".join(violations)
