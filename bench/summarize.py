"""python -m bench.summarize FILE.json...: results files as Markdown, for docs/benchmarks.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.report import fmt


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def describe(path: Path) -> str:
    doc = json.loads(path.read_text())
    out = [f"### {doc['scenario']} ({doc['mode']})\n", f"`{doc['command']}`\n"]
    src = doc.get("server_source") or {}
    out.append(f"lobby {src.get('source', '?')} @ {src.get('commit', '?')}, "
               f"load average at start {doc['machine'].get('loadavg', '?')}\n")
    out.append(markdown_table(doc["summary"]))
    for note in doc["notes"]:
        out.append(f"- {note}")
    if doc.get("error"):
        out.append(f"- error: {doc['error'].strip().splitlines()[-1]}")
    prof = doc.get("profile")
    if prof and prof.get("top_self"):
        out.append(f"\nProfile ({prof['busy_samples']} busy samples at {prof['sample_rate']}/s), "
                   "top self time:\n")
        out.append(markdown_table([{"function": r["function"], "% of busy": r["pct"]}
                                   for r in prof["top_self"][:12]]))
        out.append("Top lobby functions, inclusive:\n")
        out.append(markdown_table([{"function": r["function"], "% of busy": r["pct"]}
                                   for r in prof.get("top_lobby_inclusive", [])[:14]]))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    paths = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    for path in paths:
        print(describe(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
