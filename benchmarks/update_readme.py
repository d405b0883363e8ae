"""Copies each benchmark's printed table (benchmarks/results/<name>.md) into README.md.

README holds blocks `<!-- results:<name> -->` ... `<!-- /results:<name> -->`; this replaces their
contents, so every number in README is the output of a script in benchmarks/.
Usage: python benchmarks/update_readme.py
"""

import argparse
import re
from pathlib import Path

argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
root = Path(__file__).resolve().parent.parent
readme = root / "README.md"
text = readme.read_text()


def fill(match: re.Match) -> str:
    name = match.group(1)
    path = root / "benchmarks" / "results" / f"{name}.md"
    if not path.exists():
        writers = [  # one script may write several blocks (training_agent.py: ..._search)
            f"benchmarks/{p.name}"
            for p in sorted((root / "benchmarks").glob("*.py"))
            if f'"{name}' in p.read_text()
        ]
        print(f"no {path.relative_to(root)} yet: run {' or '.join(writers) or 'its benchmark'}")
        return match.group(0)
    body = path.read_text().strip()
    body = re.sub(r"^#+ .*\n+", "", body)  # the file's own title; README has its heading
    return f"<!-- results:{name} -->\n{body}\n<!-- /results:{name} -->"


new = re.sub(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", fill, text, flags=re.S)
readme.write_text(new)
print(f"README.md: {len(re.findall(r'<!-- results:', new))} result blocks filled")
