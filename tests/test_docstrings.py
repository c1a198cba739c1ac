"""Public API docstrings (issue 6): every public function, class and method of `dakd` has one;
each names the exceptions it raises itself; each that takes a tensor gives its shape; and the
modules of the method name their source in the paper."""

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap

import dakd

MODULES = sorted(m.name.removeprefix("dakd.") for m in pkgutil.walk_packages(dakd.__path__, "dakd.")
                 if not m.name.rsplit(".", 1)[-1].startswith("_"))
# parameter names that hold tensors: their docstring must give a shape "[...]"
TENSOR_PARAMS = re.compile(r"(logits|mask|input_ids|scores|_ce$|^ce$)")


def _public(mod):
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isfunction(obj):
            yield name, obj
        elif inspect.isclass(obj):
            yield name, obj
            for mname, m in vars(obj).items():
                if inspect.isfunction(m) and not mname.startswith("_"):
                    yield f"{name}.{mname}", m


def _names():
    for m in MODULES:
        mod = importlib.import_module(f"dakd.{m}")
        for name, obj in _public(mod):
            yield m, name, obj


def raised(fn) -> set[str]:
    """Exception classes a function raises in its own body (nested functions and lambdas aside);
    ``raise D.data_error(...)`` counts as DataError."""
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return set()
    top = ast.parse(src).body[0]
    names = set()

    class Visit(ast.NodeVisitor):
        def visit_FunctionDef(self, node):
            if node is top:
                self.generic_visit(node)
        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Lambda(self, node):
            pass

        def visit_Raise(self, node):
            e = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = e.id if isinstance(e, ast.Name) else e.attr if isinstance(e, ast.Attribute) else None
            if name == "data_error":
                names.add("DataError")
            elif name and name[0].isupper():
                names.add(name)
    Visit().visit(top)
    return names


def test_every_module_and_public_name_has_a_docstring():
    missing = []
    for m in MODULES:
        if not (importlib.import_module(f"dakd.{m}").__doc__ or "").strip():
            missing.append(f"dakd.{m}")
    for m, name, obj in _names():
        if len((inspect.getdoc(obj) or "").split()) < 5:
            missing.append(f"dakd.{m}.{name}")
    assert not missing, f"public names without a real docstring: {missing}"


def test_docstrings_name_the_exceptions_raised():
    bad = [f"dakd.{m}.{name}: {e}" for m, name, obj in _names() if inspect.isfunction(obj)
           for e in sorted(raised(obj)) if e not in (inspect.getdoc(obj) or "")]
    assert not bad, f"raised but not documented: {bad}"


def test_docstrings_give_the_shapes_of_tensor_arguments():
    bad = []
    for m, name, obj in _names():
        if not inspect.isfunction(obj):
            continue
        params = [p for p in inspect.signature(obj).parameters if TENSOR_PARAMS.search(p)]
        if params and "[" not in (inspect.getdoc(obj) or ""):
            bad.append(f"dakd.{m}.{name}({', '.join(params)})")
    assert not bad, f"tensor arguments without a shape in the docstring: {bad}"


def test_the_methods_modules_cite_the_paper():
    # the parts of DA-KD point at the equation or algorithm they implement, and give units
    for module, cites in {"losses": ["Eq. 4", "nats"], "difficulty": ["Eq. 1", "nats"],
                          "updater": ["Eq. 2", "Algorithm 1"]}.items():
        text = inspect.getsource(importlib.import_module(f"dakd.{module}"))
        for c in cites:
            assert c in text, f"dakd.{module} does not mention {c!r}"


def test_the_raise_finder_sees_what_it_should():
    # guards the exception check against passing vacuously
    from dakd import tasks, updater
    assert raised(updater.subset_size) == {"ValueError"}
    assert "DataError" in raised(tasks.load_task)


def test_modules_are_found():
    # guards the tests above against walking nothing
    assert {"losses", "difficulty", "updater", "data", "models", "train", "evaluate"} <= set(MODULES)
