"""Where a `dvc repro` spends its wall time: runs it (extra arguments are passed on, e.g. `--force`
or a target) in the current project, timestamps each "Running stage" line of its output, and prints
JSON: seconds per stage (its process plus DVC's hashing and caching of its outputs), the total, and
the stages DVC skipped. Run it in a fresh clone after `make setup` for the from-scratch figure.

    python bench/repro_timing.py            # the whole default graph
    python bench/repro_timing.py --force train_vlm evaluate_vlm extract_vlm
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

STAGE = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change")


def main() -> None:
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    skipped: list[str] = []
    proc = subprocess.Popen(["dvc", "repro", *sys.argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    for line in proc.stdout:
        sys.stderr.write(line)
        if m := STAGE.search(line):
            marks.append((m.group(1), time.perf_counter()))
        elif m := SKIPPED.search(line):
            skipped.append(m.group(1))
    rc = proc.wait()
    end = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [end]
    stages = {name: round(stop - begin, 1) for (name, begin), stop in zip(marks, ends)}
    print(json.dumps({"returncode": rc, "total_seconds": round(end - start, 1),
                      "before_first_stage_seconds": round((marks[0][1] if marks else end) - start, 1),
                      "stages": stages, "skipped": skipped}, indent=2))
    sys.exit(rc)


if __name__ == "__main__":
    main()
