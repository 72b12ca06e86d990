"""Compares two runs' metrics.json, report.md, predictions.csv, rejected.csv and config.yaml, ignoring
timestamps, durations and ids (JSON keys named like time/duration/seconds/date/commit/*_id, and ISO times,
hex ids and "N s" durations in text). Exit 1 when any differs, with the first lines of each difference.

    python tools/compare_runs.py runs/demo-before runs/demo      # e.g. a demo run before and after a change
"""
import json, re, sys, difflib
from pathlib import Path
a, b = Path(sys.argv[1]), Path(sys.argv[2])
VOLATILE = re.compile(r"(\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:?\d\d)?|\b\d+(\.\d+)? ?(s|ms|seconds)\b|[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
def norm(text): return VOLATILE.sub("<v>", text)
bad = 0
for rel in ["evaluation/metrics.json", "evaluation/report.md", "evaluation/predictions.csv", "rejected.csv", "config.yaml"]:
    ta, tb = (a / rel).read_text(), (b / rel).read_text()
    if rel.endswith(".json"):
        ja, jb = json.loads(ta), json.loads(tb)
        for k in set(ja) | set(jb):
            if re.search(r"time|duration|seconds|_id$|date|commit", k): ja.pop(k, None); jb.pop(k, None)
        ta, tb = json.dumps(ja, indent=1, sort_keys=True), json.dumps(jb, indent=1, sort_keys=True)
    na, nb = norm(ta), norm(tb)
    same = na == nb
    print(f"{rel}: {'same' if same else 'DIFFERENT'} ({len(ta)} vs {len(tb)} bytes; raw {'identical' if ta == tb else 'differs in volatile fields only' if same else 'differs'})")
    if not same:
        bad += 1
        sys.stdout.writelines(list(difflib.unified_diff(na.splitlines(1), nb.splitlines(1), rel, rel))[:40])
sys.exit(1 if bad else 0)
