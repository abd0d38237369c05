"""Every module of the package imports (catches a broken import in a rarely used path)."""

import importlib
import pkgutil

import pedray


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(pedray.__path__, "pedray.")]
    assert len(names) > 10
    for name in names:
        importlib.import_module(name)


# The house reads top-down: a module imports only from its own layer or the ones below it.
LAYERS = [  # (module prefix, layer), most specific first
    ("pedray.cli", 5), ("pedray.__main__", 5),
    ("pedray.tune", 4), ("pedray.preview", 4),                                  # commands over a stage
    ("pedray.train", 3), ("pedray.serve", 3), ("pedray.eval", 3),
    ("pedray.workspace", 2.5),                                                       # a recipe's corpus and model
    ("pedray.data", 2), ("pedray.model", 2), ("pedray.corpus", 2), ("pedray.ingest", 2), ("pedray.safety", 2),
    ("pedray.losses", 2), ("pedray.cluster", 2), ("pedray.plots", 2),
    ("pedray.markdown", 1), ("pedray.config", 1), ("pedray.storage", 1), ("pedray.cache", 1),
    ("pedray.vocab", 1), ("pedray.net", 1), ("pedray", 1),
]


def _layer(module: str) -> float:
    return next(level for prefix, level in LAYERS if module == prefix or module.startswith(prefix + "."))


def test_imports_run_top_down():
    """cli -> commands -> train/serve/eval -> workspace -> data/model/corpus/ingest -> config/storage: no
    import, at the top of a module or inside a function, runs back up."""
    import ast
    from pathlib import Path

    root = Path(pedray.__file__).parent
    upward = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("pedray", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("pedray"):
                targets = [f"pedray.{a.name}" for a in node.names] if node.module == "pedray" else [node.module]
                upward += [f"{module} -> {t}" for t in targets if _layer(t) > _layer(module)]
    assert not upward, upward
