"""Every module of the package imports (catches a broken import in a rarely used path)."""

import importlib
import pkgutil

import pedray


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(pedray.__path__, "pedray.")]
    assert len(names) > 10
    for name in names:
        importlib.import_module(name)
