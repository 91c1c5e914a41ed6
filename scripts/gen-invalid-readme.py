#!/usr/bin/env python3
"""Regenerate the real outputs in examples/invalid/README.md.

Runs ``reconcile validate examples/invalid/<dir>`` from the repository root for every
directory in the README's table, in the table's order, and rewrites:

* the table's last column ("the fix the tool prints") from the first problem's fix;
* everything from ``## Real output``'s first ``### `` heading to the end of the file.

The rest of the README (intro, "what is wrong" column) is left as written by hand.

    .venv/bin/python scripts/gen-invalid-readme.py          # rewrite the README
    .venv/bin/python scripts/gen-invalid-readme.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "examples" / "invalid" / "README.md"
RECONCILE = pathlib.Path(sys.executable).parent / "reconcile"
ROW = re.compile(r"^\| `[^`]+` \| \[`(?P<dir>[^`]+)/`\]\([^)]*\) \| .* \| (?P<fix>.*) \|$")
OUTPUT_HEADING = "## Real output"


def run(*args: str) -> tuple[int, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    proc = subprocess.run(
        [str(RECONCILE), "validate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


def fix_cell(directory: str) -> str:
    _, out = run(f"examples/invalid/{directory}", "--format", "json")
    problems = json.loads(out)["problems"]
    fix = problems[0]["fix"] if problems else None
    if not fix:
        return "(none)"
    fix = fix.replace("|", "\\|")
    return fix if "`" in fix else f"`{fix}`"


def output_section(directory: str) -> str:
    code, out = run(f"examples/invalid/{directory}")
    return (
        f"### `{directory}/`\n\n```console\n"
        f"$ reconcile validate examples/invalid/{directory}\n{out.rstrip()}\n"
        f"$ echo $?\n{code}\n```\n"
    )


def render(text: str) -> str:
    lines = text.splitlines()
    directories: list[str] = []
    for i, line in enumerate(lines):
        match = ROW.match(line)
        if match:
            directories.append(match["dir"])
            start = match.start("fix")
            lines[i] = f"{line[:start]}{fix_cell(match['dir'])} |"
    head = "\n".join(lines) + "\n"
    cut = head.index(OUTPUT_HEADING)
    first = head.index("\n### ", cut) + 1
    return head[:first] + "\n".join(output_section(d) for d in directories)


def main() -> int:
    old = README.read_text(encoding="utf-8")
    new = render(old)
    if "--check" in sys.argv[1:]:
        if new != old:
            print(f"{README.relative_to(ROOT)} is stale; run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
