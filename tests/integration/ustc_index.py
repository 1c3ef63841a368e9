#!/usr/bin/python3
"""ustc_index.py — netlm's sessions of the USTC-TFC2016 class captures against the dataset's index.

The class captures are SplitCap sessions (one per bidirectional 5-tuple) written one after
another; index.csv gives each session's first frame and frame count. With --port-reuse merge
(SplitCap's rule) netlm must find exactly those sessions, also for the sessions whose last
frame was cut inside its IP header (no ports: it joins its host pair's session), and also
with several workers.
"""
import csv
import json
import os
import subprocess
import sys
from collections import defaultdict

NETLM = os.environ["NETLM"]
ROOT = os.path.join(os.environ["NETLM_DATA_DIR"], "labeled", "ustc-tfc2016")


def main():
    expected = defaultdict(set)
    with open(os.path.join(ROOT, "index.csv")) as f:
        for row in csv.DictReader(f):
            expected[row["class"]].add((int(row["first_frame"]), int(row["n_frames"])))
    passed = failed = 0
    for cls in sorted(expected):
        path = os.path.join(ROOT, "sessions", cls, cls + ".pcap")
        for workers in ("1", "2"):
            res = subprocess.run([NETLM, "sessions", "--format", "json", "--quiet", "--port-reuse", "merge",
                                  "--workers", workers, path], capture_output=True, text=True)
            if res.returncode != 0:
                failed += 1
                print(f"FAIL {cls} workers={workers}: exit {res.returncode}: {res.stderr.strip()}")
                continue
            got = set()
            for line in res.stdout.splitlines():
                s = json.loads(line)
                got.add((s["first_frame"], s["pkts_toserver"] + s["pkts_toclient"]))
            missing = sorted(expected[cls] - got)
            extra = sorted(got - expected[cls])
            if missing or extra:
                failed += 1
                print(f"FAIL {cls} workers={workers}: {len(expected[cls])} index rows, {len(got)} sessions; "
                      f"missing {missing[:5]} extra {extra[:5]}")
            else:
                passed += 1
                print(f"ok   {cls} workers={workers}: {len(got)} sessions = index rows")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
