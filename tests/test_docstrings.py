"""Every public function and class of `dakd` carries a docstring (issue: public API documented)."""

import importlib
import inspect
import pkgutil

import dakd

MODULES = sorted(m.name for m in pkgutil.iter_modules(dakd.__path__) if not m.name.startswith("_"))


def _public(mod):
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield name, obj


def test_every_module_and_public_name_has_a_docstring():
    missing = []
    for m in MODULES:
        mod = importlib.import_module(f"dakd.{m}")
        if not (mod.__doc__ or "").strip():
            missing.append(f"dakd.{m}")
        for name, obj in _public(mod):
            doc = inspect.getdoc(obj) or ""
            if len(doc.split()) < 5:
                missing.append(f"dakd.{m}.{name}")
    assert not missing, f"public names without a real docstring: {missing}"


def test_modules_are_found():
    # guards the test above against walking nothing
    assert {"losses", "difficulty", "updater", "data", "models", "train", "evaluate"} <= set(MODULES)
