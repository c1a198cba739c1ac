"""Write the parameter reference, ``docs/parameters.md``, from ``dakd/config.py`` itself, so that it
cannot drift from the code: every field of `dakd.config.DistillConfig` with its default as written
in the source, the value the ``cpu`` preset's DA-KD run gives it (the parameters cell of
``notebooks/01_distill.ipynb``), and its meaning, taken from the comments on the field.

    .venv/bin/python tools/param_reference.py           # rewrite docs/parameters.md
    .venv/bin/python tools/param_reference.py --check   # exit 1 if the committed file is stale

How comments are read (``tokenize``; fields and defaults from ``ast``):
- the comment at the end of a field's line is its meaning; comment-only lines right below it
  continue it (``dtype``, ``method``, ``loss``, ...);
- a comment block right above a field that has no comment on its own line is that field's
  meaning (``teacher_cache_k``, ``allow_degenerate_loss``);
- a one-line comment of one lower-case word, optionally followed by a parenthesis and a colon
  clause (``# data``, ``# baselines (dakd.baselines): ...``), starts a section of the table.
``tests/test_param_reference.py`` checks that the committed file equals this tool's output and
that every field appears with a meaning.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "dakd" / "config.py"
OUT = ROOT / "docs" / "parameters.md"
SECTION = re.compile(r"^[a-z]+( \([^)]*\))?(:.*)?$")
# parameters of notebooks/01_distill.ipynb that are not config fields (they steer the launch)
NOTEBOOK_ONLY = (
    ("num_processes", "1", "> 1: training and data-parallel evaluation through `accelerate launch` subprocesses"),
    ("cpu", "False", "with `num_processes` > 1 and no GPU: gloo processes on the CPU"),
    ("overwrite", "False", "True: retrain into an `output_dir` holding another config's finished run "
                           "(its `results.json` is kept as `results.<its hash>.json`); False refuses"),
)


@dataclasses.dataclass
class Field:
    name: str
    default: str  # the default as written in dakd/config.py
    section: str
    meaning: list[str] = dataclasses.field(default_factory=list)


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """{line: comment text without '#'} and the lines that hold only a comment."""
    comments, code_lines = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return comments, set(comments) - code_lines


def read_fields(path: Path = CONFIG) -> list[Field]:
    """The fields of ``DistillConfig`` in source order, each with its default text, its section and
    its meaning (see the module docstring for how comments are assigned).

    Raises:
        ValueError: ``DistillConfig`` is not found in ``path``.
    """
    source = path.read_text()
    tree = ast.parse(source)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DistillConfig"), None)
    if cls is None:
        raise ValueError(f"no class DistillConfig in {path}")
    comments, alone = _comments(source)
    nodes = [n for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    fields, section = [], ""
    prev_line, prev = cls.body[0].end_lineno, None  # the docstring's last line
    for node in nodes:
        f = Field(node.target.id, ast.get_source_segment(source, node.value) if node.value else "", section)
        block = [comments[i] for i in range(prev_line + 1, node.lineno) if i in alone]
        if len(block) == 1 and SECTION.match(block[0]):
            f.section = section = block[0]
        elif block and node.lineno not in comments:
            f.meaning += block  # a comment block above a field without its own comment
        elif block and prev is not None and prev_line in comments:
            prev.meaning += block  # comment lines continuing the comment on the previous field's line
        elif block:
            f.meaning += block
        if node.lineno in comments:
            f.meaning.append(comments[node.lineno])
        prev_line, prev = node.end_lineno, f
        fields.append(f)
    # comment lines below the last field (before the first method) continue it
    nxt = next((n.lineno for n in cls.body if isinstance(n, ast.FunctionDef)), cls.end_lineno + 1)
    if prev is not None:
        prev.meaning += [comments[i] for i in range(prev_line + 1, nxt) if i in alone]
    return fields


def _value(v) -> str:
    """A value as the source writes it: strings in double quotes, tuples in parentheses."""
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return "(" + ", ".join(map(_value, v)) + (",)" if len(v) == 1 else ")")
    return repr(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(path: Path = CONFIG) -> str:
    """The Markdown of ``docs/parameters.md``."""
    from dakd.config import DistillConfig
    from dakd.presets import get_preset

    cpu = get_preset("cpu")["dakd"]
    defaults = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
    fields = read_fields(path)
    out = ["# Parameters of a run (`dakd.config.DistillConfig`)", "",
           "Generated by `tools/param_reference.py` from `dakd/config.py` (fields, defaults as written, and",
           "the comments on each field); do not edit by hand, rerun the tool. `tests/test_param_reference.py`",
           "fails when this file is stale.", "",
           "Each field is a parameter of `notebooks/01_distill.ipynb` (papermill `-p name value`, lists as",
           "YAML with `-y`) and a keyword of `DistillConfig`. The defaults are the paper's protocol (Alpaca",
           "prompts, all of Dolly, 10 epochs, lr 1e-5, 5 seeds, 256 new tokens: hours of GPU time); the",
           "notebook's parameters cell holds the `cpu` preset's DA-KD run instead (column `cpu` preset,",
           "empty where it keeps the default). A finished run is reused when its config hash matches:",
           "every field enters the hash but `output_dir`, `save_checkpoints`, `save_epoch_students`,",
           "`keep_checkpoint` and `allow_degenerate_loss` (fields added after the first results enter it",
           "only when changed from their default).", ""]
    for section in dict.fromkeys(f.section for f in fields):
        if section:
            out += [f"## {section[0].upper()}{section[1:]}", ""]
        out += ["| field | default | `cpu` preset | meaning |", "|---|---|---|---|"]
        for f in (f for f in fields if f.section == section):
            mine = getattr(cpu, f.name)
            shown = "" if mine == defaults[f.name] else f"`{_value(mine)}`"
            out.append(f"| `{f.name}` | `{_cell(f.default)}` | {_cell(shown)} | {_cell(' '.join(f.meaning))} |")
        out.append("")
    out += ["## Notebook-only parameters of `01_distill`", "",
            "| parameter | default | meaning |", "|---|---|---|"]
    out += [f"| `{n}` | `{d}` | {m} |" for n, d, m in NOTEBOOK_ONLY]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/parameters.md is not the tool's output")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        ok = OUT.exists() and OUT.read_text() == text
        print(f"{OUT.relative_to(ROOT)} is {'current' if ok else 'stale: run tools/param_reference.py'}")
        return 0 if ok else 1
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(read_fields())} fields)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
