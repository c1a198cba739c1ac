"""The parameter reference cannot go stale: ``docs/parameters.md`` is exactly what
``tools/param_reference.py`` writes from ``dakd/config.py``, and every field of `DistillConfig`
appears in it with its default and a meaning (a new field without a comment fails here)."""

import dataclasses
import importlib.util
import sys
from pathlib import Path

from dakd.config import DistillConfig

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("param_reference", ROOT / "tools" / "param_reference.py")
param_reference = sys.modules["param_reference"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(param_reference)


def test_committed_reference_is_the_tools_output():
    committed = (ROOT / "docs" / "parameters.md").read_text()
    assert committed == param_reference.render(), "docs/parameters.md is stale: run tools/param_reference.py"


def test_every_field_appears_once_with_a_meaning():
    names = [f.name for f in dataclasses.fields(DistillConfig)]
    read = param_reference.read_fields()
    assert [f.name for f in read] == names
    assert not [f.name for f in read if not " ".join(f.meaning).strip()], "fields without a comment in dakd/config.py"
    rows = [line for line in (ROOT / "docs" / "parameters.md").read_text().splitlines() if line.startswith("| `")]
    for name in names:
        assert sum(row.startswith(f"| `{name}` |") for row in rows) == 1, name


def test_defaults_are_the_sources():
    # the default column is the source text, which must evaluate to the dataclass's default
    for f, field in zip(param_reference.read_fields(), dataclasses.fields(DistillConfig)):
        assert eval(f.default) == field.default, f.name


def test_comments_are_assigned_to_their_field(tmp_path):
    src = tmp_path / "config.py"
    src.write_text('class DistillConfig:\n    """Doc."""\n\n'
                   "    # models\n"
                   "    a: int = 1  # first\n"
                   "    # continues a\n"
                   "    a2: int = 1  # a2's\n"
                   "    # about b, above it\n"
                   "    b: int = 2\n"
                   "    # data (loading): what is read\n"
                   "    c: str = 'x'  # c's own\n"
                   "    d: bool = False  # d's\n"
                   "    # more of d\n\n"
                   "    def f(self):\n        pass\n")
    got = {f.name: (f.section, " ".join(f.meaning)) for f in param_reference.read_fields(src)}
    assert got == {"a": ("models", "first continues a"), "a2": ("models", "a2's"),
                   "b": ("models", "about b, above it"),
                   "c": ("data (loading): what is read", "c's own"), "d": ("data (loading): what is read",
                                                                          "d's more of d")}
