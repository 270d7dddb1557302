"""The layers point one way: no toytasks module imports one from a layer above it (lazy imports
inside functions included). The README's "Layout" lists them in this order."""
import ast

from conftest import ROOT

LAYERS = [
    ["errors", "files", "schema", "layout", "interrupts"],
    ["tasks"],
    ["config"],
    ["groups", "model", "data", "loss", "optim", "interventions", "phases", "fourier", "metrics_table", "storage",
     "plots", "resources"],
    ["measures"],
    ["training"],
    ["analysis"],
    ["sweep", "cli", "__init__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def top(module: str) -> str:
    """The first part of a toytasks module's name: `training.module` -> `training`."""
    return module.split(".")[0] or "__init__"


def imported(path, package: list[str]) -> set[str]:
    """The toytasks modules a file imports, as dotted names inside the package (`training.module`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:  # relative: from the file's package
            base = package[:len(package) - (node.level - 1)]
            targets = [[*base, *node.module.split(".")]] if node.module else [[*base, a.name] for a in node.names]
            targets = [t if _is_module(t) else t[:-1] for t in targets]  # `from . import CONSTANT`
            names |= {".".join(parts) for parts in targets}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("toytasks"):
            names.add(node.module.removeprefix("toytasks").lstrip("."))
        elif isinstance(node, ast.Import):
            names |= {a.name.removeprefix("toytasks").lstrip(".") for a in node.names if a.name.startswith("toytasks")}
    return {name or "__init__" for name in names}


def _is_module(parts: list[str]) -> bool:
    path = ROOT / "toytasks" / "/".join(parts)
    return path.with_suffix(".py").exists() or path.is_dir()


def test_every_module_has_a_layer():
    modules = {top(str(p.relative_to(ROOT / "toytasks").with_suffix("")).replace("/", "."))
               for p in (ROOT / "toytasks").rglob("*.py")}
    assert modules <= set(LAYER), modules - set(LAYER)


def test_no_module_imports_from_a_layer_above():
    for path in (ROOT / "toytasks").rglob("*.py"):
        parts = list(path.relative_to(ROOT / "toytasks").with_suffix("").parts)
        package = parts[:-1]  # the package the file is in (for __init__.py, the package itself)
        module = ".".join(parts if parts[-1] != "__init__" or not package else package)
        source = LAYER[top(module)]
        for name in imported(path, package):
            assert LAYER[top(name)] <= source, f"toytasks/{module} (layer {source}) imports {name} (layer {LAYER[top(name)]})"
