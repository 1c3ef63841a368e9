#!/usr/bin/python3
"""sensor_netns.py — `netlm sensor` on a real interface fed by tcpreplay equals `netlm replay` of
the same captures.

A veth pair: one end (the sensor's) is moved into a fresh network namespace, the other stays here
and tcpreplay sends real captures into it (data/demo.pcap: 30 sessions of Microsoft Teams TCP/TLS
and UDP, 500 Ethernet frames of at most 1506 bytes; and, when ../shared/data is there, the
USTC-TFC2016 MySQL sessions: 724 TCP sessions, 1502 frames of at most 630 bytes, none cut by a snap
length — tcpreplay sends only the captured bytes, so a cut frame would arrive shorter on the wire
than replay counts it). IPv6 is disabled on both ends before they come up and neither end has an
address, so the kernel sends nothing of its own on the link: every frame the sensor sees is a
frame of the captures, in their order. So no BPF filter is needed (one would also hide the
captures' own non-IP frames from the sensor and shift its frame ordinals).

What has to be equal, and why it can be: a session is ready after K packets (counted in arrival
order), at its first FIN/RST, or at its end; which packets it holds depends only on the order of
the frames, not on their times — except through the idle timeouts: live packets carry today's
time at 2000 packets/s, not the captures' own times (demo.pcap spans 10 s, the MySQL sessions are
concatenated samples whose clock jumps). So both sides run with every idle timeout off and
emergency mode off (the same config file for both), and every flow still open at the end ends as
"shutdown": the replay at the end of its input, the sensor at SIGTERM's drain. Then, strictly:
  - the same sessions (5-tuples) get classification events, with the same label, label_id,
    trigger and packet count, and a score equal within 1e-4 (the model's batches differ: the
    sensor's are as small as the link is slow);
  - the same flows get flow events, with the same packets/bytes each way, state, reason, verdict;
  - the sensor counted exactly the frames tcpreplay sent, no kernel drops, and then every flow_id
    (the run-wide ordinal of a session's first frame) equals replay's.
Every line of both outputs is valid against schema/events.schema.json.

All of it runs with the sensor capturing with libpcap, then with two libpcap readers
(capture.readers = 2: the interface opened twice in one packet fanout group, the kernel's
symmetric flow hash choosing the socket; a reader thread and a flow table each), and when the
build has DPDK through DPDK (capture.source = "dpdk", the net_af_packet poll-mode driver on the
same veth end, no hugepages), with one receive queue and with two (qpairs = 2: two AF_PACKET
sockets in a fanout group, as a NIC's symmetric RSS spreads frames over a port's queues): the
same equalities hold for every source, except that with two readers each reader's table numbers
its own flows (odd flow_ids on reader 0, even on reader 1, both seen). The two libpcap readers are
pinned with capture.cpus = "1,0" (where the machine has both): /proc shows reader 0 (the main
thread) on CPU 1, netlm-reader1 on CPU 0, and every other thread where it was.

Needs root, `ip netns` and tcpreplay; prints "skipped: ..." and exits 0 otherwise. The namespace
and the veth pair are removed on every exit path."""
import atexit
from collections import Counter
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sensor_common import (DATA, NETLM, SRC, check, compare_with_replay, contents, finish,  # noqa: E402
                           frame_count, last_stats, read_events, wait_for, write_conf_no_timeouts)

TAG = f"{os.getpid() % 100000}"
NS = f"netlm-st-{TAG}"
VETH_TX = f"nlmtx{TAG}"  # stays here: tcpreplay sends into it
VETH_RX = f"nlmrx{TAG}"  # moved into NS: the sensor captures on it
PPS = 2000
ORIGINAL_CPUS = ""  # this process's Cpus_allowed_list, which the sensor's threads inherit


def skip(why):
    print(f"skipped: {why}")
    sys.exit(0)


def sh(*cmd, ns=False, check_rc=True):
    argv = (["ip", "netns", "exec", NS] if ns else []) + list(cmd)
    res = subprocess.run(argv, capture_output=True, text=True)
    if check_rc and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.returncode}")
    return res


def cleanup():
    # deleting one end of a veth pair deletes both; deleting the namespace deletes what is in it
    subprocess.run(["ip", "link", "del", VETH_TX], capture_output=True)
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def setup():
    sh("ip", "netns", "add", NS)
    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(1))  # atexit runs on sys.exit
    sh("ip", "link", "add", VETH_TX, "type", "veth", "peer", "name", VETH_RX)
    sh("ip", "link", "set", VETH_RX, "netns", NS)
    # no router solicitations, MLD reports or DAD probes: IPv6 off before the links come up
    # (written to /proc/sys directly: no sysctl binary needed; a kernel without IPv6 has no knob
    # and sends no IPv6 either)
    for dev, ns in ((VETH_TX, False), (VETH_RX, True)):
        knob = f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
        sh("sh", "-c", f"[ ! -e {knob} ] || echo 1 > {knob}", ns=ns)
    sh("ip", "link", "set", VETH_RX, "up", ns=True)
    sh("ip", "link", "set", VETH_TX, "up")
    # veth comes up asynchronously (carrier): wait for it on both ends
    end = time.time() + 10
    while time.time() < end:
        a = sh("cat", f"/sys/class/net/{VETH_TX}/operstate", check_rc=False).stdout.strip()
        b = sh("cat", f"/sys/class/net/{VETH_RX}/operstate", ns=True, check_rc=False).stdout.strip()
        if a == "up" and b == "up":
            return
        time.sleep(0.05)
    raise RuntimeError(f"veth pair did not come up ({a}, {b})")


def write_conf(path, out, dpdk, readers=1, cpus=""):
    if dpdk:  # the same interface through DPDK's AF_PACKET poll-mode driver, without hugepages
        qpairs = f",qpairs={readers}" if readers > 1 else ""
        capture = (f'{{ source = "dpdk"; promiscuous = true; bpf = ""; readers = {readers}; '
                   f'dpdk = {{ port = "net_af_packet0,iface={VETH_RX}{qpairs}"; '
                   f'eal = "--no-huge -m 256 --no-pci --no-shconf"; }}; }}')
    else:
        capture = (f'{{ interface = "{VETH_RX}"; promiscuous = true; buffer_mb = 8; bpf = ""; '
                   f'readers = {readers}; cpus = "{cpus}"; }}')
    write_conf_no_timeouts(path, capture, out)


def thread_cpus(pid):
    """{thread name: [CPUs it may run on]} of a process (the main thread under the name 'main')."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = contents(f"/proc/{pid}/task/{tid}/comm").strip()
            status = contents(f"/proc/{pid}/task/{tid}/status")
        except OSError:
            continue  # a thread that ended meanwhile
        allowed = next((line.split(":")[1].strip() for line in status.splitlines()
                        if line.startswith("Cpus_allowed_list:")), "")
        out["main" if tid == str(pid) else comm] = allowed
    return out


def run_live(tmp, name, captures, n_frames, dpdk, readers=1, cpus=""):
    """The sensor in the namespace (libpcap, or DPDK's AF_PACKET driver on the same interface;
    `readers` capture threads), tcpreplay into the other end, SIGTERM, then the same captures
    through `netlm replay`: compare_with_replay."""
    live_out = os.path.join(tmp, f"{name}.json")
    conf = os.path.join(tmp, f"{name}.conf")
    write_conf(conf, live_out, dpdk, readers, cpus)

    # the sensor inside the namespace; it tells "systemd" (this script) when it is ready
    notify_path = os.path.join(tmp, f"{name}.notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    # like systemd, read every message: the kernel queues only net.unix.max_dgram_qlen (10)
    # datagrams and a sender blocks when they are not read (the sensor's STATUS= lines come
    # at each stats interval)
    messages, got_ready, closing = [], threading.Event(), threading.Event()

    def listen():
        notify.settimeout(0.1)
        while not closing.is_set():
            try:
                msg = notify.recv(4096).decode(errors="replace")
            except socket.timeout:
                continue
            except OSError:
                return
            messages.append(msg)
            if "READY=1" in msg.split("\n"):
                got_ready.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    err_path = os.path.join(tmp, f"{name}.err")
    with open(err_path, "w") as err_f:
        proc = subprocess.Popen(["ip", "netns", "exec", NS, NETLM, "sensor", "-c", conf],
                                stdout=subprocess.DEVNULL, stderr=err_f, env=env)
    try:
        end = time.time() + 60
        while not got_ready.wait(0.1) and time.time() < end and proc.poll() is None:
            pass
        ready = got_ready.is_set()
        check(f"{name}: sensor notifies READY=1 (sd_notify, NOTIFY_SOCKET)", ready, contents(err_path).strip())
        if not ready:
            finish()  # exits 1; the finally below still stops the sensor
        res = subprocess.run(["tcpreplay", "-i", VETH_TX, f"--pps={PPS}", *captures],
                             capture_output=True, text=True, timeout=120)
        sent = None
        for line in res.stdout.splitlines():
            if "Successful packets:" in line:
                sent = int(line.split(":")[1])
        check(f"{name}: tcpreplay sent all {n_frames} frames at {PPS} packets/s", res.returncode == 0 and sent == n_frames,
              f"rc {res.returncode}, sent {sent}: {res.stdout[-400:]} {res.stderr[-400:]}")
        # the last frames are on the wire; the sensor's stats event shows when it has them all
        check(f"{name}: sensor counted every frame sent",
              wait_for(lambda: (last_stats(live_out) or {}).get("capture", {}).get("packets", 0) >= n_frames, 30, 0.05),
              str((last_stats(live_out) or {}).get("capture")))
        if cpus:  # reader k on the k-th CPU of the list, the other threads where they were
            placed = thread_cpus(proc.pid)
            want = cpus.split(",")
            others = {t: c for t, c in placed.items() if t != "main" and not t.startswith("netlm-reader")}
            check(f"{name}: capture.cpus \"{cpus}\": reader 0 (the main thread) on CPU {want[0]}, reader 1 "
                  f"(netlm-reader1) on CPU {want[1 % len(want)]}, no other thread pinned",
                  placed.get("main") == want[0] and placed.get("netlm-reader1") == want[1 % len(want)]
                  and others and all(c == ORIGINAL_CPUS for c in others.values()), f"{placed}, allowed {ORIGINAL_CPUS}")
    finally:
        proc.send_signal(signal.SIGTERM)  # drain: flows end as shutdown, queued sessions classified
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        closing.set()
        listener.join()
        notify.close()
    err = contents(err_path)
    check(f"{name}: sensor: SIGTERM drains and exits 0", proc.returncode == 0, f"rc {proc.returncode}: {err.strip()}")

    # the same captures through `netlm replay`, same config (its output section is not used)
    replay_out = os.path.join(tmp, f"{name}-replay.json")
    res = subprocess.run([NETLM, "replay", "-c", conf, "-q", "-o", replay_out, *captures],
                         capture_output=True, text=True, timeout=600)
    check(f"{name}: replay exits 0", res.returncode == 0, res.stderr.strip())

    live = read_events(contents(live_out), f"sensor on veth ({name})")
    rep = read_events(contents(replay_out), "replay")
    compare_with_replay(live, rep, n_frames, same_ids=readers == 1)
    if readers > 1:
        how = "a receive queue each" if dpdk else "a packet fanout group"
        check(f"{name}: the log says {readers} readers", f"({readers} readers, {how})" in err, err)
        ids = [e["flow_id"] for e in live if e.get("event_type") == "flow"]
        check(f"{name}: flow ids unique across the readers' tables", len(ids) == len(set(ids)),
              f"{len(ids) - len(set(ids))} repeated")
        per_reader = Counter((i - 1) % readers for i in ids)
        check(f"{name}: flows on every reader (the kernel's fanout hash spread them)", len(per_reader) == readers,
              str(dict(per_reader)))
        print(f"     flows per reader: {dict(sorted(per_reader.items()))}")
        stats = [e for e in live if e.get("event_type") == "stats"][-1]["stats"]["capture"]
        frames = [r["packets"] for r in stats.get("readers", [])]
        check(f"{name}: stats count each reader's frames, every frame once, on both readers",
              len(frames) == readers and sum(frames) == n_frames and min(frames) > 0, str(stats))
    check(f"{name}: sensor logged its drain", "SIGTERM: draining" in err, err.strip())
    check(f"{name}: sensor notified STOPPING=1", any("STOPPING=1" in m.split("\n") for m in messages), str(messages[-3:]))


def main():
    global ORIGINAL_CPUS
    ORIGINAL_CPUS = next(line.split(":")[1].strip() for line in contents("/proc/self/status").splitlines()
                         if line.startswith("Cpus_allowed_list:"))
    if os.geteuid() != 0:
        skip("needs root (network namespaces and live capture)")
    if not shutil.which("ip") or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        skip("'ip netns' is not available")
    if not shutil.which("tcpreplay"):
        skip("tcpreplay is not installed")
    captures = [os.path.join(SRC, "data", "demo.pcap")]
    mysql = os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions", "MySQL", "MySQL.pcap")
    if DATA and os.path.exists(mysql):
        captures.append(mysql)
    try:
        setup()
    except RuntimeError as e:
        skip(f"cannot make a network namespace with a veth pair here: {e}")
    n_frames = sum(frame_count(c) for c in captures)

    with tempfile.TemporaryDirectory() as tmp:
        run_live(tmp, "libpcap", captures, n_frames, dpdk=False)
        print("  the same with two libpcap readers (capture.readers = 2, a packet fanout group)")
        # with its readers pinned: the other way round from the CPUs' order where there are two
        cpus = "1,0" if len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0) else ""
        run_live(tmp, "libpcap-2readers", captures, n_frames, dpdk=False, readers=2, cpus=cpus)
        if "DPDK no" not in subprocess.run([NETLM, "--version"], capture_output=True, text=True).stdout:
            print("  the same through DPDK (net_af_packet on the veth end)")
            run_live(tmp, "dpdk", captures, n_frames, dpdk=True)
            print("  through DPDK with two receive queues (net_af_packet qpairs = 2, kernel fanout by flow hash)")
            run_live(tmp, "dpdk-2queues", captures, n_frames, dpdk=True, readers=2)
    finish()


if __name__ == "__main__":
    main()
