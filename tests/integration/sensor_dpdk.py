#!/usr/bin/python3
"""sensor_dpdk.py — `netlm sensor` capturing through DPDK (capture.source = "dpdk") equals
`netlm replay` of the same captures.

DPDK's pcap poll-mode driver (the virtual device net_pcap0,rx_pcap=FILE) plays a capture file
into a DPDK port, so the whole DPDK path runs without a NIC bound to DPDK or hugepages (the EAL
gets --no-huge -m 256 --no-pci): the EAL start, the port, its receive queue and mempool, the
copy out of the mbufs, the user-space BPF filter, the port's counters. Frames arrive with today's
time, so as in sensor_netns.py every idle timeout and emergency mode are off on both sides and
the comparison is strict (sensor_common.compare_with_replay): the same frames, sessions, labels,
triggers, flows and flow ids. Then:
  - several receive queues (capture.readers = 2): each capture split as a NIC's symmetric RSS
    spreads frames (pcap_split.py: every frame of an IP pair on one queue), one rx_pcap file per
    queue, gives replay's sessions and flows again, each flow numbered by its queue's table;
  - a capture filter (bpf = "udp") keeps exactly the frames tshark counts as UDP;
  - a port that does not exist, EAL arguments the EAL rejects, capture.source = "dpdk" with no
    port, and more queues than the port has are each one clear error line and a non-zero exit.
Every event line is checked against schema/events.schema.json."""
import os
import signal
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pcap_split  # noqa: E402
from sensor_common import (DATA, NETLM, SRC, by_type, check, compare_with_replay, contents,  # noqa: E402
                           finish, frame_count, last_stats, one_line_error, read_events, wait_for,
                           write_conf_no_timeouts)

EAL = "--no-huge -m 256 --no-pci --no-shconf"


def write_conf(path, out, port, bpf="", eal=EAL, queues=1):
    write_conf_no_timeouts(path, f'{{ source = "dpdk"; bpf = "{bpf}"; readers = {queues}; '
                                 f'dpdk = {{ port = "{port}"; eal = "{eal}"; rx_descriptors = 1024; }}; }}', out)


def run_sensor(tmp, name, capture, n_expected, bpf="", queue_files=None):
    """The sensor on a net_pcap port reading capture (or queue_files, one receive queue each),
    until its stats count n_expected frames; SIGTERM; returns (events, stderr, config path)."""
    out = os.path.join(tmp, f"{name}.json")
    conf = os.path.join(tmp, f"{name}.conf")
    files = queue_files or [capture]
    port = "net_pcap0," + ",".join(f"rx_pcap={f}" for f in files)
    write_conf(conf, out, port, bpf, queues=len(files))
    err_path = os.path.join(tmp, f"{name}.err")
    with open(err_path, "w") as err_f:
        proc = subprocess.Popen([NETLM, "sensor", "-c", conf], stdout=subprocess.DEVNULL, stderr=err_f)
    try:
        got = wait_for(lambda: (last_stats(out) or {}).get("capture", {}).get("packets", 0) >= n_expected
                       or proc.poll() is not None, 60, 0.05)
        check(f"{name}: the sensor counted {n_expected} frames", got and proc.poll() is None,
              f"{(last_stats(out) or {}).get('capture')} {contents(err_path).strip()}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    err = contents(err_path)
    check(f"{name}: SIGTERM drains and exits 0", proc.returncode == 0, f"rc {proc.returncode}: {err.strip()}")
    check(f"{name}: the log names the DPDK port", f"capturing on dpdk:{port}" in err, err)
    return read_events(contents(out), f"sensor on DPDK ({name})"), err, conf


def tshark_count(capture, display_filter):
    res = subprocess.run(["tshark", "-r", capture, "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, timeout=120)
    return len(res.stdout.split()) if res.returncode == 0 else None


def queue_of_flow(event, n):
    """The queue pcap_split puts a flow event's frames on."""
    family = socket.AF_INET6 if ":" in event["src_ip"] else socket.AF_INET
    a, b = (socket.inet_pton(family, event[k]) for k in ("src_ip", "dest_ip"))
    return pcap_split.queue_of_pair(a, b, n)


def sensor(*args):
    return subprocess.run([NETLM, "sensor", *args], capture_output=True, text=True, timeout=60)


def main():
    captures = [os.path.join(SRC, "data", "demo.pcap")]
    mysql = os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions", "MySQL", "MySQL.pcap")
    if DATA and os.path.exists(mysql):
        captures.append(mysql)
    with tempfile.TemporaryDirectory() as tmp:
        for i, capture in enumerate(captures):
            n_frames = frame_count(capture)
            live, err, conf = run_sensor(tmp, f"capture{i}", capture, n_frames)
            replay_out = os.path.join(tmp, f"replay{i}.json")
            res = subprocess.run([NETLM, "replay", "-c", conf, "-q", "-o", replay_out, capture],
                                 capture_output=True, text=True, timeout=600)
            check(f"replay of {os.path.basename(capture)} exits 0", res.returncode == 0, res.stderr.strip())
            print(f"  {os.path.basename(capture)}: {n_frames} frames through DPDK against replay")
            replayed = read_events(contents(replay_out), "replay")
            compare_with_replay(live, replayed, n_frames)

            # two receive queues, fed as symmetric RSS would: a reader and a flow table each
            queue_files, counts = pcap_split.split(capture, 2, os.path.join(tmp, f"queues{i}-"))
            check(f"{os.path.basename(capture)} split over both queues", min(counts) > 0, str(counts))
            live, err, _ = run_sensor(tmp, f"queues{i}", capture, n_frames, queue_files=queue_files)
            check(f"queues{i}: the log says 2 receive queues", "(2 readers, a receive queue each)" in err, err)
            print(f"  {os.path.basename(capture)}: {counts} frames on two receive queues against replay")
            compare_with_replay(live, replayed, n_frames, same_ids=False)
            per_reader = [r["packets"] for r in by_type(live, "stats")[-1]["stats"]["capture"].get("readers", [])]
            check(f"queues{i}: stats count each reader's frames, as many as its queue's file holds",
                  per_reader == counts, f"{per_reader} vs {counts}")
            flows = by_type(live, "flow")
            ids = [f["flow_id"] for f in flows]
            check(f"queues{i}: flow ids unique across the queues' tables", len(ids) == len(set(ids)),
                  f"{len(ids) - len(set(ids))} repeated")
            wrong = [f["flow_id"] for f in flows if (f["flow_id"] - 1) % 2 != queue_of_flow(f, 2)]
            check(f"queues{i}: every flow numbered by the table of the queue its frames came on (odd ids: "
                  f"queue 0, even: queue 1)", flows and not wrong, f"{len(wrong)} elsewhere: {wrong[:5]}")

        # a capture filter, run in user space on the copied frames: the frames tshark calls UDP
        demo = captures[0]
        n_udp = tshark_count(demo, "udp")
        check("tshark counts the UDP frames of demo.pcap", bool(n_udp), str(n_udp))
        if n_udp:
            live, _, _ = run_sensor(tmp, "bpf-udp", demo, n_udp, bpf="udp")
            stats = by_type(live, "stats")
            packets = stats[-1]["stats"]["capture"]["packets"] if stats else None
            check(f"bpf \"udp\": exactly the {n_udp} UDP frames", packets == n_udp, str(packets))
            flows = by_type(live, "flow")
            check("bpf \"udp\": UDP flows only", flows and all(f["proto"] == "UDP" for f in flows),
                  str(sorted({f["proto"] for f in flows})))

        # errors: one line each, naming what is wrong (and, where DPDK said why, that too)
        conf = os.path.join(tmp, "nosuch.conf")
        write_conf(conf, os.path.join(tmp, "nosuch.json"), "net_pcap0,rx_pcap=/nonexistent/x.pcap")
        one_line_error("a port whose device cannot start", sensor("-c", conf),
                       ["net_pcap0: no such port", "Couldn't open /nonexistent/x.pcap"], exit_codes=(1, 2))
        write_conf(conf, os.path.join(tmp, "nosuch.json"), "net_pcap0,rx_pcap=" + demo, eal="--no-such-eal-option")
        one_line_error("EAL arguments the EAL rejects", sensor("-c", conf),
                       ["capture.dpdk.eal", "unrecognized option '--no-such-eal-option'"], exit_codes=(1, 2))
        write_conf(conf, os.path.join(tmp, "nosuch.json"), "")
        one_line_error("source dpdk without a port", sensor("-c", conf, "--check-config"), ["capture.dpdk.port"],
                       exit_codes=(1, 2))
        one_line_error("-i dpdk: without a port", sensor("-c", os.path.join(tmp, "capture0.conf"), "-i", "dpdk:"),
                       ["--interface"], exit_codes=(1, 2))
        write_conf(conf, os.path.join(tmp, "nosuch.json"), "net_pcap0,rx_pcap=" + demo, queues=2)
        one_line_error("more receive queues than the port has", sensor("-c", conf),
                       ["capture.readers is 2, the port has at most 1 receive queue"], exit_codes=(1,))
        write_conf(conf, os.path.join(tmp, "nosuch.json"), "net_pcap0,rx_pcap=" + demo, queues=0)
        one_line_error("capture.readers = 0", sensor("-c", conf, "--check-config"), ["capture.readers"],
                       exit_codes=(2,))
    finish()


if __name__ == "__main__":
    main()
