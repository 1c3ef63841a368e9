#!/usr/bin/python3
"""common.py — what every python integration test shares: the ok/FAIL report lines and their
count, the final tally and exit status, and running netlm (the binary ctest names in $NETLM),
alone or as several processes under mpirun."""
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


def mpirun(n, *args):
    """Runs n processes of $NETLM with args under mpirun (as root too, more processes than cores
    allowed), output captured."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1",
               ASAN_OPTIONS="detect_leaks=0")  # Open MPI's own allocations outlive MPI_Finalize
    return subprocess.run(["mpirun", "-np", str(n), os.environ["NETLM"], *args], capture_output=True, text=True,
                          env=env)


def loss_column(path):
    """The loss of every step row of a training run's loss.csv (dev rows left out)."""
    rows = [line.split(",") for line in open(path).read().splitlines()[1:]]
    return [float(r[1]) for r in rows if r[1]]


def worst_relative(a, b):
    """The largest |x − y| / |x| over two equally long series; 1.0 when their lengths differ."""
    if len(a) != len(b) or not a:
        return 1.0
    return max(abs(x - y) / max(abs(x), 1e-30) for x, y in zip(a, b))
