"""Print the tables a finished preset wrote (``runs/<preset>/<table>.json``, by notebooks 02-05) as
Markdown, for the README's results section.

    .venv/bin/python tools/readme_tables.py cpu-full [table ...]
    .venv/bin/python tools/readme_tables.py cpu-claims     # the claims table (figures/cpu-claims/claims.json),
                                                           # as the README's headline table shows it
"""

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1 and v != 0 else f"{v:.2f}"
    return str(v)


def markdown(table: dict, drop=("run",)) -> str:
    """A saved table as a Markdown table (run-name columns dropped), with its paper and note lines."""
    rows = table.get("rows", table.get("points", []))
    cols = [c for c in rows[0] if c not in drop and not c.endswith(" run")] if rows else []
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    if table.get("paper"):
        out.append(f"\nPaper: {table['paper']}")
    if table.get("note"):
        out.append(f"Note: {table['note']}")
    return "\n".join(out)


def main():
    from dakd.results import saved_tables

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset")
    ap.add_argument("tables", nargs="*")
    a = ap.parse_args()
    claims_json = ROOT / "figures" / a.preset / "claims.json"
    if claims_json.exists() and not a.tables:
        import json

        from dakd.claims import claims_markdown

        print(claims_markdown(json.loads(claims_json.read_text())))
        return
    for name, t in saved_tables(ROOT / "runs" / a.preset).items():
        if (a.tables and name not in a.tables) or t is None:
            continue
        print(f"### {name}\n")
        print(markdown(t))
        print()


if __name__ == "__main__":
    main()
