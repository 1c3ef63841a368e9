#!/usr/bin/python3
"""sessions_bench.py — throughput and memory of session assembly, against tshark and ndpiReader.

Builds (once, cached in --work) a large capture by replicating the labeled USTC-TFC2016
sessions with rewritten addresses, then times in the same run, on the same file:
  netlm sessions (1 and 2 workers), netlm dataset understanding (1 and 2 workers),
  tshark -q -z conv,tcp -z conv,udp, and ndpiReader -i.
Peak RSS comes from GNU time (/usr/bin/time, Debian package time). A second capture 10x larger shows that netlm's memory is set
by --max-flows, not by the size of the file. Prints one JSON object.

usage: sessions_bench.py BUILD_DIR DATA_DIR [--work DIR] [--copies N] [--big-copies N] [--skip-peers]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def run(cmd, cwd=None):
    """Runs cmd with stdout discarded; returns (wall seconds, peak RSS in MiB). The peak comes
    from GNU time: the rusage of a child forked from this interpreter would start from the
    interpreter's own peak, which exec does not reset."""
    with tempfile.NamedTemporaryFile(mode="r") as rss_file:
        t0 = time.monotonic()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file.name, *cmd], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, cwd=cwd)
        wall = time.monotonic() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.decode(errors='replace')[-500:]}")
        rss_kib = int(rss_file.read().split()[-1])
    return wall, rss_kib / 1024.0


def best_of(n, cmd):
    runs = [run(cmd) for _ in range(n)]
    wall = min(r[0] for r in runs)
    rss = max(r[1] for r in runs)
    return wall, rss


def build_capture(make, data, work, copies):
    out = os.path.join(work, f"ustc-x{copies}")
    marker = os.path.join(out, "done.json")
    if not os.path.exists(marker):
        res = subprocess.run([make, os.path.join(data, "labeled", "ustc-tfc2016", "sessions"), str(copies), out],
                             check=True, capture_output=True, text=True)
        with open(marker, "w") as f:
            f.write(res.stdout)
    with open(marker) as f:
        info = json.loads(f.read())
    info["dir"] = out
    info["file"] = os.path.join(out, "all.pcap")
    info["bytes"] = os.path.getsize(info["file"])
    return info


def count_sessions(netlm, path, extra=()):
    res = subprocess.run([netlm, "sessions", "--quiet", "--stats", *extra, path], check=True,
                         capture_output=True, text=True)
    stats = json.loads(res.stderr.strip().splitlines()[-1])
    return stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("data")
    ap.add_argument("--work", default="/tmp/netlm-bench")
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--big-copies", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the max_flows memory runs")
    a = ap.parse_args()
    netlm = os.path.join(a.build, "netlm")
    make = os.path.join(a.build, "netlm_make_capture")
    os.makedirs(a.work, exist_ok=True)
    cap = build_capture(make, a.data, a.work, a.copies)
    stats = count_sessions(netlm, cap["file"])
    frames, sessions = stats["frames"], stats["sessions"]
    result = {"capture": {"frames": frames, "sessions": sessions, "bytes": cap["bytes"], "copies": a.copies},
              "machine": {"cpus": os.cpu_count()}, "runs": {}}

    def record(name, cmd, repeat=a.repeat):
        wall, rss = best_of(repeat, cmd)
        result["runs"][name] = {"seconds": round(wall, 3), "packets_per_s": round(frames / wall),
                                "sessions_per_s": round(sessions / wall), "peak_rss_mib": round(rss, 1)}
        print(f"{name}: {wall:.2f} s, {frames / wall / 1e6:.2f} Mpps, {rss:.0f} MiB", file=sys.stderr)

    runs = [] if a.memory_only else ["1", "2"]
    for w in runs:
        record(f"netlm_sessions_w{w}", [netlm, "sessions", "--quiet", "--workers", w, cap["file"]])
    ds_out = os.path.join(a.work, "dataset-out")
    for w in runs:
        record(f"netlm_dataset_understanding_w{w}",
               [netlm, "dataset", "understanding", "--quiet", "--workers", w, "--pcap_path",
                os.path.join(cap["dir"], "classes"), "--dataset_dir", ds_out, "--random_seed", "1"])
    if not a.skip_peers and not a.memory_only:
        record("tshark_conv", ["tshark", "-n", "-q", "-r", cap["file"], "-z", "conv,tcp", "-z", "conv,udp"], repeat=1)
        record("ndpiReader", ["ndpiReader", "-q", "-i", cap["file"]], repeat=1)
        r = result["runs"]
        best = min(r["netlm_sessions_w1"]["seconds"], r["netlm_sessions_w2"]["seconds"])
        result["ratios"] = {
            "netlm_w1_vs_tshark": round(r["tshark_conv"]["seconds"] / r["netlm_sessions_w1"]["seconds"], 1),
            "netlm_best_vs_tshark": round(r["tshark_conv"]["seconds"] / best, 1),
            "netlm_w1_vs_ndpiReader": round(r["ndpiReader"]["seconds"] / r["netlm_sessions_w1"]["seconds"], 1),
            "netlm_best_vs_ndpiReader": round(r["ndpiReader"]["seconds"] / best, 1),
        }
    if runs:
        result["packets_per_s_per_core_w1"] = result["runs"]["netlm_sessions_w1"]["packets_per_s"]
        # The decode + flow-table stage alone, frames already in memory (bench/flowtable_bench.c).
        stage = {}
        for w in ("1", "2"):
            for k in ("0", "32"):
                out = subprocess.run([os.path.join(a.build, "netlm_flowtable_bench"), cap["file"], w, k, str(a.repeat)],
                                     check=True, capture_output=True, text=True).stdout
                stage[f"workers_{w}_k_{k}"] = json.loads(out)
                print(f"stage workers={w} K={k}: {stage[f'workers_{w}_k_{k}']['packets_per_s'] / 1e6:.2f} Mpps",
                      file=sys.stderr)
        result["decode_flowtable_stage"] = stage

    # Memory: the same max_flows on a 10x larger capture.
    if a.big_copies:
        big = build_capture(make, a.data, a.work, a.big_copies)
        mem = {}
        for mf in ("262144", "1048576"):
            for name, c in (("small", cap), ("big", big)):
                wall, rss = run([netlm, "sessions", "--quiet", "--max-flows", mf, c["file"]])
                mem[f"max_flows_{mf}_{name}"] = {"frames": c["frames"], "file_mib": round(c["bytes"] / 2**20),
                                                 "seconds": round(wall, 2), "peak_rss_mib": round(rss, 1)}
                print(f"memory {mf} {name}: {rss:.0f} MiB", file=sys.stderr)
        result["memory"] = mem
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
