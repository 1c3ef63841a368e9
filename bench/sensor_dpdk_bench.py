#!/usr/bin/python3
"""sensor_dpdk_bench.py — the sensor's DPDK capture source against its libpcap file reader, on
the same capture in the same run, classification off (a flow sensor: capture → decode → flow
table, no events but stats).

Input: the foundation benchmark's capture (bench/sessions_bench.py's cache in --work, COPIES
replicas of the labeled USTC-TFC2016 sessions). Runs, --workers flow workers each:
  replay:  `netlm replay --no-model --no-flow-events` on the file (libpcap reads it), timed whole,
           best of --repeat;
  dpdk:    `netlm sensor --no-model` with capture.source = "dpdk" on DPDK's pcap poll-mode driver
           (net_pcap0,rx_pcap=FILE: the PMD reads the file into mbufs, netlm's reader polls the
           port, copies each frame out of its mbuf and frees it), EAL --no-huge --no-pci; the rate
           is taken from the sensor's own stats events (every 0.2 s: packets and uptime) between
           the first that counts a packet and the first that counts them all, so the EAL's
           start and the drain are left out. Best of --repeat.
  With --queues N (> 1) the DPDK port has N receive queues (capture.readers = N), fed as a
  NIC's symmetric RSS would feed them: the capture split by IP pair into N files
  (tests/integration/pcap_split.py, cached in --work), one rx_pcap file per queue; each queue
  has its reader thread and flow table, with one flow worker (the reader itself).
Both must count every frame of the file and create the same flows (checked; idle timeouts
off, as the sensor's clock is today's). Prints one JSON object with the ratio.

usage: sensor_dpdk_bench.py BUILD_DIR DATA_DIR [--work DIR] [--copies N] [--workers N] [--queues N] [--repeat N]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from sessions_bench import build_capture, run as timed  # noqa: E402  the same capture cache and GNU time
import pcap_split  # noqa: E402
from sensor_common import frame_count  # noqa: E402

TIMEOUTS_OFF = """timeouts = { tcp_new = 0.0; tcp_established = 0.0; tcp_closed = 0.0; udp_new = 0.0;
             udp_established = 0.0; other_new = 0.0; other_established = 0.0; };
  emergency = { enter_pct = 0; leave_pct = 0; };"""


def write_conf(path, capture, workers, out):
    with open(path, "w") as f:
        f.write(f"""capture = {capture};
flow = {{ workers = {workers}; max_flows = 1048576; {TIMEOUTS_OFF} }};
model = {{ task = "none"; }};
output = {{ type = "file"; filename = "{out}"; stats_interval = 0.2; flow_events = false; }};
service = {{ user = ""; }};
""")


def stats_events(path):
    try:
        with open(path) as f:
            return [json.loads(line)["stats"] for line in f if '"event_type":"stats"' in line]
    except FileNotFoundError:
        return []


def replay_run(netlm, conf, pcap, workers):
    """Wall seconds of the whole replay; its final stats."""
    out = conf + ".json"
    wall, rss = timed([netlm, "replay", "-c", conf, "-q", "--no-model", "--no-flow-events", "-w", str(workers),
                       "-o", out, pcap])
    st = stats_events(out)[-1]
    os.remove(out)
    return wall, rss, st


def dpdk_run(netlm, conf, out, frames, timeout_s=300):
    """The sensor on the net_pcap port until its stats count every frame; SIGTERM. Packets per
    second between the first stats event counting a packet and the first counting them all."""
    with open(conf + ".err", "w") as err:
        proc = subprocess.Popen([netlm, "sensor", "-c", conf], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            st = stats_events(out)
            if st and st[-1]["capture"]["packets"] >= frames:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    st = stats_events(out)
    os.remove(out)
    if proc.returncode != 0 or not st or st[-1]["capture"]["packets"] < frames:
        raise RuntimeError(f"the DPDK sensor stopped at {st[-1]['capture'] if st else None}, exit {proc.returncode}: "
                           f"{open(conf + '.err').read()[-600:]}")
    first = next(s for s in st if s["capture"]["packets"] > 0)
    done = next(s for s in st if s["capture"]["packets"] >= frames)
    seconds = done["uptime"] - first["uptime"]
    if seconds <= 0:
        raise RuntimeError("the sensor read the whole capture within one stats interval: too small to time "
                           "(more --copies)")
    return {"packets_per_s": round((done["capture"]["packets"] - first["capture"]["packets"]) / seconds),
            "measured_seconds": round(seconds, 2), "kernel_drops": st[-1]["capture"]["kernel_drops"],
            "iface_drops": st[-1]["capture"]["iface_drops"], "flows_created": st[-1]["flow"]["created"],
            "packets": st[-1]["capture"]["packets"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build")
    ap.add_argument("data")
    ap.add_argument("--work", default="/tmp/netlm-bench")
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--queues", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    netlm = os.path.join(a.build, "netlm")
    if "DPDK no" in subprocess.run([netlm, "--version"], capture_output=True, text=True).stdout:
        sys.exit("this netlm was built without DPDK")
    os.makedirs(a.work, exist_ok=True)
    cap = build_capture(os.path.join(a.build, "netlm_make_capture"), a.data, a.work, a.copies)
    frames = cap["frames"]
    result = {"capture": {"file": cap["file"], "frames": frames, "copies": a.copies}, "workers": a.workers,
              "queues": a.queues, "runs": {}}
    queue_files = [cap["file"]]
    if a.queues > 1:
        prefix = os.path.join(a.work, f"{os.path.basename(cap['file'])}.q{a.queues}-")
        queue_files, counts = pcap_split.paths(prefix, a.queues), None
        if not all(os.path.exists(f) and os.path.getmtime(f) >= os.path.getmtime(cap["file"]) for f in queue_files):
            print(f"splitting the capture over {a.queues} queues", file=sys.stderr)
            queue_files, counts = pcap_split.split(cap["file"], a.queues, prefix)
        # the split counts as it writes; files cached from an earlier run are counted here
        result["capture"]["frames_per_queue"] = counts or [frame_count(f) for f in queue_files]
    with tempfile.TemporaryDirectory(prefix="netlm-dpdk-bench-") as work:
        conf = os.path.join(work, "replay.conf")
        write_conf(conf, '{ source = "libpcap"; }', a.workers, os.path.join(work, "unused.json"))
        best = min((replay_run(netlm, conf, cap["file"], a.workers) for _ in range(a.repeat)), key=lambda r: r[0])
        wall, rss, st = best
        result["runs"]["replay_libpcap"] = {"seconds": round(wall, 2), "packets_per_s": round(frames / wall),
                                            "flows_created": st["flow"]["created"], "packets": st["capture"]["packets"],
                                            "peak_rss_mib": round(rss, 1), "best_of": a.repeat}
        print(f"replay (libpcap) w{a.workers}: {frames / wall / 1e6:.2f} M packets/s", file=sys.stderr)
        out = os.path.join(work, "dpdk.json")
        conf = os.path.join(work, "dpdk.conf")
        port = "net_pcap0," + ",".join(f"rx_pcap={f}" for f in queue_files)
        write_conf(conf, f'{{ source = "dpdk"; readers = {a.queues}; dpdk = {{ port = "{port}"; '
                         f'eal = "--no-huge -m 1024 --no-pci --no-shconf"; }}; }}',
                   a.workers if a.queues == 1 else 1, out)
        runs = [dpdk_run(netlm, conf, out, frames) for _ in range(a.repeat)]
        d = max(runs, key=lambda r: r["packets_per_s"])
        result["runs"]["sensor_dpdk_net_pcap"] = dict(d, best_of=a.repeat)
        what = f"w{a.workers}" if a.queues == 1 else f"{a.queues} queues, w1 each"
        print(f"sensor (DPDK net_pcap) {what}: {d['packets_per_s'] / 1e6:.2f} M packets/s", file=sys.stderr)
    r = result["runs"]
    result["same_work"] = (r["sensor_dpdk_net_pcap"]["flows_created"] == r["replay_libpcap"]["flows_created"]
                           and r["sensor_dpdk_net_pcap"]["packets"] == r["replay_libpcap"]["packets"] == frames)
    result["dpdk_vs_libpcap_file"] = round(r["sensor_dpdk_net_pcap"]["packets_per_s"] / r["replay_libpcap"]["packets_per_s"], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
