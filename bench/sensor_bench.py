#!/usr/bin/python3
"""sensor_bench.py — `netlm replay` (the sensor's whole pipeline over a file) with the bundled
model on the CPU, against ndpiReader on the same file in the same run.

Input: the foundation benchmark's capture (bench/sessions_bench.py, built by
netlm_make_capture: the labeled USTC-TFC2016 sessions replicated COPIES times with rewritten
addresses, 10 µs a frame), cached in --work like sessions_bench.py does.

Runs, each timed whole (wall clock, output to a file) with peak RSS from GNU time:
  classify:     replay, every session classified (the reader waits when the ready queue is
                full), --classify-copies copies (the model is the slow stage: the 30-copy file has
                434 k sessions); sessions classified/s, packets/s, ready→verdict latency p50/p99
                (exact, from the classification events' latency_us; in this mode it is mostly
                time spent in the full 4096-deep queue), peak RSS;
  live_like:    the same file with --drop and a 64-deep queue, as a live sensor runs: the reader
                never waits, sessions the model has no time for are skipped (counted); latency is
                then queue wait + batch, what a live verdict costs;
  no_model:     classification off (`netlm replay --no-model`: no model loaded, no batcher, the
                flow table counters-only, flow and stats events only — a flow sensor): packets/s
                through capture → decode → flow table, 1 and 2 workers, on the --copies file,
                without flow events (the pipeline alone) and with them (what a flow sensor writes),
                best of --repeat;
  live_veth:    `netlm sensor` on a veth pair fed by tcpreplay (root, ip netns, tcpreplay; else
                left out) at --live-pps (1000) with the USTC-TFC2016 Zeus class (603 sessions,
                5,158 frames, most readied on the wire by a FIN or RST): a rate the model keeps up
                with, so the latency is a live verdict's own cost (batch_timeout_us + tokenizing
                + one batch), not queueing. Only sessions readied on the wire count (8th packet,
                FIN, RST); the rest are readied together by SIGTERM's drain. With 1 model thread
                and with model.threads = 0 (auto: the cores left to the model, 1 on 2 cores with 2 flow
                workers) and with one model thread per core (--threads; the old default), tcpreplay
                --timer=nano (its default timer spins on a core);
  ndpiReader -q -i on each file (nDPI's own DPI classification of every flow), and
  `netlm sessions` (counters only) on the big file, to compare the machine's load with the
  foundation benchmark's run.
Prints one JSON object: both sides and the ratios.

The classify runs use --threads model threads (default 0: auto, as shipped); the count it
resolves to is recorded (the sensor's rule: the cores less the capture threads, at least 1).

usage: sensor_bench.py BUILD_DIR DATA_DIR [--work DIR] [--copies N] [--classify-copies N]
                       [--model DIR] [--threads N] [--repeat N] [--skip-peers]
                       [--live-pps N] [--live-capture FILE]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sessions_bench import build_capture, run as timed  # noqa: E402  the same capture cache and GNU time


def auto_threads(workers):
    """model.threads = 0 as the sensor resolves it (sensor_auto_model_threads): the cores less
    the capture threads (the reader, and the workers when there are 2 or more), at least 1."""
    cores = len(os.sched_getaffinity(0))
    return max(1, cores - (workers + 1 if workers > 1 else 1))


def write_conf(path, model, threads, queue, workers, packets_per_session=32):
    with open(path, "w") as f:
        f.write(f"""flow = {{ workers = {workers}; packets_per_session = {packets_per_session}; }};
session = {{ ready_packets = 8; queue_size = {queue}; }};
model = {{ path = "{model}"; threads = {threads}; batch_max = 32; }};
""")


def replay(netlm, conf, pcap, workers, drop, work, no_model=False, flow_events=False):
    out = os.path.join(work, "events.json")
    cmd = [netlm, "replay", "-c", conf, "-q", "-w", str(workers), "-o", out]
    if not flow_events:
        cmd.append("--no-flow-events")
    if drop:
        cmd.append("--drop")
    if no_model:
        cmd.append("--no-model")
    wall, rss = timed(cmd + [pcap])
    stats, lat = read_events(out)
    os.remove(out)
    return wall, rss, stats, lat, cmd + [pcap]


def read_events(path):
    """The last stats event and the latency_us of every classification event."""
    stats, lat = None, []
    with open(path) as f:
        for line in f:
            if '"event_type":"classification"' in line:
                lat.append(json.loads(line)["classification"]["latency_us"])
            elif '"event_type":"stats"' in line:
                stats = json.loads(line)["stats"]
    return stats, lat


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]


def row(frames, wall, rss, stats, lat, workers, cmd):
    """One run. latency_us_*: exact, from the classification events' latency_us;
    stats_latency_us: the final stats event's (log-linear histogram, 16 sub-buckets per power of
    two: a percentile is its bucket's upper bound, capped at the maximum, ≤ 6.25 % above exact)."""
    s = stats["sessions"]
    return {"command": " ".join(cmd), "workers": workers, "seconds": round(wall, 2),
            "packets_per_s": round(frames / wall), "packets_per_s_per_worker": round(frames / wall / workers),
            "sessions_ready": s["ready"], "sessions_classified": s["classified"], "sessions_skipped": s["skipped"],
            "classification_events": len(lat), "sessions_classified_per_s": round(s["classified"] / wall, 1),
            "latency_us_p50": pct(lat, 0.50), "latency_us_p99": pct(lat, 0.99), "latency_us_max": max(lat or [0]),
            "stats_latency_us": stats["latency_us"], "batches": stats["batches"],
            "peak_rss_mib": round(rss, 1), "flows_created": stats["flow"]["created"]}


def live_latency(netlm, model, pcap, pps, threads):
    """`netlm sensor` on one end of a veth pair (the other end in a fresh network namespace gets
    pcap from tcpreplay at pps packets/s, a rate the model keeps up with): the ready→verdict
    latency of a live sensor that is not saturated. Needs root, ip netns and tcpreplay; None
    otherwise."""
    if os.geteuid() != 0 or not shutil.which("tcpreplay") or not shutil.which("ip"):
        return None
    tag = os.getpid() % 100000
    ns, tx, rx = f"netlm-sb-{tag}", f"nlbtx{tag}", f"nlbrx{tag}"

    def sh(*cmd):
        subprocess.run(list(cmd), check=True, capture_output=True)

    try:
        sh("ip", "netns", "add", ns)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None
    try:
        sh("ip", "link", "add", rx, "type", "veth", "peer", "name", tx)
        sh("ip", "link", "set", tx, "netns", ns)
        for dev, inside in ((rx, False), (tx, True)):
            knob = f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
            sh(*(["ip", "netns", "exec", ns] if inside else []), "sh", "-c", f"[ ! -e {knob} ] || echo 1 > {knob}")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", tx, "up")
        sh("ip", "link", "set", rx, "up")
        time.sleep(0.5)
        with tempfile.TemporaryDirectory(prefix="netlm-sensor-live-") as work:
            out, conf, err = (os.path.join(work, n) for n in ("events.json", "live.conf", "err"))
            with open(conf, "w") as f:
                f.write(f"""capture = {{ interface = "{rx}"; promiscuous = true; buffer_mb = 16; }};
flow = {{ workers = 2; }};
session = {{ ready_packets = 8; queue_size = 4096; }};
model = {{ path = "{model}"; threads = {threads}; batch_max = 32; batch_timeout_us = 2000; }};
output = {{ type = "file"; filename = "{out}"; stats_interval = 0; flow_events = false; }};
service = {{ user = ""; }};
""")
            with open(err, "w") as ef:
                proc = subprocess.Popen([netlm, "sensor", "-c", conf], stdout=subprocess.DEVNULL, stderr=ef)
            try:
                end = time.time() + 60
                while time.time() < end and proc.poll() is None:
                    with open(err) as ef:
                        if "capturing on" in ef.read():
                            break
                    time.sleep(0.05)
                t0 = time.monotonic()
                subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "-q", "--timer=nano", "-i", tx, f"--pps={pps}", pcap],
                               check=True, capture_output=True)
                wall = time.monotonic() - t0
                time.sleep(1.0)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=300)
            stats, _ = read_events(out)
            # only sessions readied on the wire (8th packet, FIN, RST): the rest are readied by
            # SIGTERM's drain at the end, all at once, and wait for each other
            lat, n_drain = [], 0
            with open(out) as f:
                for line in f:
                    if '"event_type":"classification"' in line:
                        c = json.loads(line)["classification"]
                        if c["trigger"] in ("packets", "fin", "rst"):
                            lat.append(c["latency_us"])
                        else:
                            n_drain += 1
        return {"command": f"tcpreplay --timer=nano -i VETH --pps={pps} {pcap}  ->  {netlm} sensor -c CONF (-i the peer VETH, "
                           f"model.threads = {threads}, 2 flow workers)",
                "model_threads": threads or auto_threads(2),
                "pps": pps, "seconds_sending": round(wall, 2), "captured_packets": stats["capture"]["packets"],
                "kernel_drops": stats["capture"]["kernel_drops"], "sessions_ready": stats["sessions"]["ready"],
                "sessions_classified": stats["sessions"]["classified"], "sessions_skipped": stats["sessions"]["skipped"],
                "latency_sessions": len(lat), "sessions_readied_by_the_drain": n_drain,
                "latency_us_p50": pct(lat, 0.50), "latency_us_p90": pct(lat, 0.90), "latency_us_p99": pct(lat, 0.99),
                "latency_us_max": max(lat or [0]), "stats_latency_us": stats["latency_us"],
                "batches": stats["batches"]}
    finally:
        subprocess.run(["ip", "link", "del", rx], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("build")
    ap.add_argument("data")
    ap.add_argument("--work", default="/tmp/netlm-bench")
    ap.add_argument("--copies", type=int, default=30, help="capture of the no-model runs (the foundation's: 30)")
    ap.add_argument("--classify-copies", type=int, default=3, help="capture of the classify runs")
    ap.add_argument("--model", default=os.path.join(HERE, "..", "models", "ustc-tfc2016"))
    ap.add_argument("--threads", type=int, default=0, help="model.threads of the classify runs (0 = auto, as shipped)")
    ap.add_argument("--repeat", type=int, default=3, help="no-model runs: best of N")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--live-pps", type=int, default=1000, help="live run's tcpreplay rate; 0 = no live run")
    ap.add_argument("--live-capture", default=None, help="live run's capture (default: the Zeus class file)")
    a = ap.parse_args()
    netlm = os.path.join(a.build, "netlm")
    make = os.path.join(a.build, "netlm_make_capture")
    model = os.path.abspath(a.model)
    if a.live_capture is None:
        a.live_capture = os.path.join(a.data, "labeled", "ustc-tfc2016", "sessions", "Zeus", "Zeus.pcap")
    os.makedirs(a.work, exist_ok=True)
    big = dict(build_capture(make, a.data, a.work, a.copies), copies=a.copies)
    small = dict(build_capture(make, a.data, a.work, a.classify_copies), copies=a.classify_copies)
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    result = {"machine": {"cpus": os.cpu_count(), "loadavg_before": load_before}, "model": os.path.basename(model),
              "captures": {}, "runs": {}}
    for c in (small, big):
        result["captures"][f"x{c['copies']}"] = {"file": c["file"], "frames": c["frames"], "bytes": c["bytes"]}

    with tempfile.TemporaryDirectory(prefix="netlm-sensor-bench-") as work:
        # 1. classification on: every session classified
        conf = os.path.join(work, "classify.conf")
        write_conf(conf, model, a.threads, 4096, 2)
        wall, rss, st, n, cmd = replay(netlm, conf, small["file"], 2, False, work)
        result["runs"]["classify"] = dict(row(small["frames"], wall, rss, st, n, 2, cmd), capture=f"x{small['copies']}",
                                          model_threads=a.threads or auto_threads(2))
        ours = result["runs"]["classify"]
        print(f"classify x{small['copies']}: {wall:.1f} s, {st['sessions']['classified'] / wall:.0f} sessions/s, "
              f"{small['frames'] / wall / 1e3:.0f} k packets/s, {rss:.0f} MiB, latency p50 {ours['latency_us_p50']} "
              f"p99 {ours['latency_us_p99']} µs", file=sys.stderr)
        # 2. live-like: --drop, a short queue
        conf = os.path.join(work, "live.conf")
        write_conf(conf, model, a.threads, 64, 2)
        wall, rss, st, n, cmd = replay(netlm, conf, small["file"], 2, True, work)
        result["runs"]["live_like"] = dict(row(small["frames"], wall, rss, st, n, 2, cmd), capture=f"x{small['copies']}",
                                           model_threads=a.threads or auto_threads(2))
        print(f"live-like x{small['copies']}: {wall:.1f} s, skipped {st['sessions']['skipped']}, "
              f"p50 {st['latency_us']['p50']} µs p99 {st['latency_us']['p99']} µs", file=sys.stderr)
        # 3. classification off: --no-model (no model, no batcher, counters-only flow table)
        conf = os.path.join(work, "off.conf")
        write_conf(conf, model, 1, 16, 1)
        for fe in (False, True):
            for w in (1, 2):
                best = None
                for _ in range(a.repeat):
                    r = replay(netlm, conf, big["file"], w, False, work, no_model=True, flow_events=fe)
                    if best is None or r[0] < best[0]:
                        best = r
                wall, rss, st, n, cmd = best
                name = f"no_model_w{w}" + ("_flow_events" if fe else "")
                result["runs"][name] = dict(row(big["frames"], wall, rss, st, n, w, cmd), capture=f"x{big['copies']}",
                                            flow_events=fe, best_of=a.repeat)
                print(f"no-model w{w}{' +flow events' if fe else ''} x{big['copies']}: {wall:.2f} s, "
                      f"{big['frames'] / wall / 1e6:.2f} M packets/s ({big['frames'] / wall / w / 1e6:.2f} M per worker), "
                      f"{rss:.0f} MiB", file=sys.stderr)
        # the foundation's `netlm sessions` (counters only, no pipeline) on the same file, now: how
        # busy the machine is compared with docs/benchmarks.md's 0.556 s
        wall, rss = timed([netlm, "sessions", "--quiet", "--workers", "1", big["file"]])
        result["runs"]["reference_netlm_sessions_w1"] = {
            "command": f"{netlm} sessions --quiet --workers 1 {big['file']}", "seconds": round(wall, 2),
            "packets_per_s": round(big["frames"] / wall), "peak_rss_mib": round(rss, 1)}
        print(f"reference netlm sessions w1: {wall:.2f} s", file=sys.stderr)
    # 4. live, below the model's capacity: the latency a verdict costs when nothing queues
    if a.live_pps:
        for th in (0, os.cpu_count() or 1):
            live = live_latency(netlm, model, a.live_capture, a.live_pps, th)
            if not live:
                print("live on veth: skipped (needs root, ip netns, tcpreplay)", file=sys.stderr)
                break
            result["runs"][f"live_veth_model_threads_{th}"] = live
            print(f"live on veth at {a.live_pps} pps, model threads {th}: {live['sessions_classified']} classified, "
                  f"latency p50 {live['latency_us_p50']} p99 {live['latency_us_p99']} µs", file=sys.stderr)
    # 5. the peer
    if not a.skip_peers:
        for c in (small, big):
            wall, rss = timed(["ndpiReader", "-q", "-i", c["file"]])
            result["runs"][f"ndpiReader_x{c['copies']}"] = {
                "command": f"ndpiReader -q -i {c['file']}", "seconds": round(wall, 2),
                "packets_per_s": round(c["frames"] / wall), "peak_rss_mib": round(rss, 1)}
            print(f"ndpiReader x{c['copies']}: {wall:.2f} s, {rss:.0f} MiB", file=sys.stderr)
        r = result["runs"]
        nd_small, nd_big = r[f"ndpiReader_x{small['copies']}"], r[f"ndpiReader_x{big['copies']}"]
        best_off = max(r[k]["packets_per_s"] for k in r if k.startswith("no_model"))
        result["ratios"] = {
            "classify_packets_per_s_vs_ndpiReader": round(r["classify"]["packets_per_s"] / nd_small["packets_per_s"], 2),
            "classify_rss_vs_ndpiReader": round(r["classify"]["peak_rss_mib"] / nd_small["peak_rss_mib"], 2),
            "no_model_w1_packets_per_s_vs_ndpiReader": round(r["no_model_w1"]["packets_per_s"]
                                                             / nd_big["packets_per_s"], 2),
            "no_model_best_packets_per_s_vs_ndpiReader": round(best_off / nd_big["packets_per_s"], 2),
        }
    per_worker = result["runs"]["no_model_w1"]["packets_per_s_per_worker"]
    result["no_model_packets_per_s_per_worker_w1"] = per_worker
    result["target_packets_per_s_per_worker"] = 3_000_000
    result["target_met"] = per_worker >= 3_000_000
    with open("/proc/loadavg") as f:
        result["machine"]["loadavg_after"] = f.read().split()[:3]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
