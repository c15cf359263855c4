"""Print docs/security.md's "bad inputs tried" table from a refusals log.

Run the tests with ``BLOCKBUSTER_REFUSALS_LOG=/tmp/refusals.jsonl`` (tests/_trees.py
appends one line per bad input tried), then ``python tests/_refusal_table.py
/tmp/refusals.jsonl``.
"""

from __future__ import annotations

import collections
import json
import sys

NAMES = {
    "api": "Python API (`tile_process`, `merge_tile_labels`)",
    "cli": "command line (subprocess)",
    "deploy": "deployments (`prepare_segment`, segmenters)",
    "property": "drawn output paths (hypothesis, deployment path rules)",
    "served": "served deployment runs (`prefect server` + `blockbuster serve`)",
}


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    tried: collections.Counter = collections.Counter()
    refused: collections.Counter = collections.Counter()
    lost: collections.Counter = collections.Counter()
    for r in rows:
        k = r["case"].split(":")[0]
        tried[k] += 1
        refused[k] += bool(r["refused"]) and not r.get("added")
        lost[k] += int(r["bytes_lost"])
    print("| entry point | bad inputs tried | refused with a clear error | bytes lost |")
    print("|---|---|---|---|")
    for k in sorted(tried):
        print(f"| {NAMES.get(k, k)} | {tried[k]} | {refused[k]} | {lost[k]} |")
    print(f"| **all** | {sum(tried.values())} | {sum(refused.values())} | {sum(lost.values())} |")


if __name__ == "__main__":
    main(sys.argv[1])
