#!/usr/bin/python3
"""common.py — what every python integration test shares: the ok/FAIL report lines and their
count, the final tally and exit status, and running netlm (the binary ctest names in $NETLM)."""
import os
import subprocess
import sys

results = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)
    return ok


def summary():
    """Prints the tally; the exit status it calls for."""
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


def finish():
    sys.exit(summary())


def netlm(*args, ok=True):
    """Runs $NETLM with args, output captured; a non-zero exit raises unless ok=False."""
    res = subprocess.run([os.environ["NETLM"], *args], capture_output=True, text=True)
    if ok and res.returncode != 0:
        raise RuntimeError(f"netlm {' '.join(args)} exited {res.returncode}: {res.stderr.strip()}")
    return res
