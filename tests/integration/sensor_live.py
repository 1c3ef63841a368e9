#!/usr/bin/python3
"""sensor_live.py — `netlm sensor` capturing live on the loopback interface (needs root, or
CAP_NET_RAW; skipped otherwise). UDP datagrams from this script make sessions: one of 10 packets
(ready by count), one of 2 packets (ready when it times out idle: the live clock ticks with
wall-clock time when the wire is quiet). Then: SIGHUP after renaming the events file (logrotate)
must continue in a new file; SIGUSR2 with a broken model path logs one line and keeps running;
SIGUSR2 with a good config swaps the model; SIGTERM drains and exits 0. Every line of both files
is valid against the schema. As root with service.user = nobody the sensor also drops privileges
(checked through /proc). Then a flow sensor (--no-model) whose NOTIFY_SOCKET is never read: its
SIGTERM drain must not wait for systemd."""
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sensor_common import MODEL, NETLM, by_type, check, contents, finish, read_events, stop, wait_for  # noqa: E402

PORT = 39999


def conf(path, out, model, user=""):
    with open(path, "w") as f:
        f.write(f"""capture = {{ interface = "lo"; bpf = "udp port {PORT}"; promiscuous = false; buffer_mb = 4; }};
flow = {{ workers = 2; max_flows = 4096; timeouts = {{ udp_new = 1.0; udp_established = 1.0; }}; }};
session = {{ ready_packets = 8; queue_size = 64; }};
model = {{ path = "{model}"; threads = 1; batch_timeout_us = 1000; }};
output = {{ type = "file"; filename = "{out}"; stats_interval = 0.5; flow_events = true; }};
service = {{ user = "{user}"; }};
""")


def send(sport, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", sport))
    for i in range(n):
        s.sendto(bytes([i]) * 100, ("127.0.0.1", PORT))
        time.sleep(0.01)
    s.close()


def main():
    if os.geteuid() != 0 or not os.path.exists("/sys/class/net/lo"):
        print("skipped: live capture on lo needs root")
        sys.exit(0)
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o777)  # the sensor writes here after dropping to nobody
        out = os.path.join(tmp, "eve.json")
        cfg = os.path.join(tmp, "netlm.conf")
        user = "nobody" if any(p.pw_name == "nobody" for p in pwd.getpwall()) else ""
        conf(cfg, out, MODEL, user)
        proc = subprocess.Popen([NETLM, "sensor", "-c", cfg], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            check("sensor starts and writes stats", wait_for(lambda: '"stats"' in contents(out)),
                  proc.stderr.read() if proc.poll() is not None else "no stats")
            if user:
                with open(f"/proc/{proc.pid}/status") as f:
                    uid = [line.split()[1] for line in f if line.startswith("Uid:")][0]
                check("dropped privileges to service.user", int(uid) == pwd.getpwnam(user).pw_uid, f"uid {uid}")
            send(40001, 10)
            send(40002, 2)
            check("a classification for the 10-packet session (ready by count)",
                  wait_for(lambda: '"src_port":40001' in contents(out) and '"classification"' in contents(out)))
            check("a classification for the 2-packet session (ready at its idle timeout)",
                  wait_for(lambda: contents(out).count('"classification"') >= 2))
            # logrotate: rename, SIGHUP, the sensor continues in a new file
            os.rename(out, out + ".1")
            proc.send_signal(signal.SIGHUP)
            check("SIGHUP: a new events file", wait_for(lambda: '"stats"' in contents(out)))
            # a broken reload keeps the running model
            conf(cfg, out, os.path.join(tmp, "no-model"), user)
            proc.send_signal(signal.SIGUSR2)
            time.sleep(1.0)
            check("SIGUSR2 with a broken model: still running", proc.poll() is None)
            conf(cfg, out, MODEL, user)
            proc.send_signal(signal.SIGUSR2)
            time.sleep(1.5)
            send(40003, 9)
            check("after a good reload it still classifies",
                  wait_for(lambda: '"src_port":40003' in contents(out) and contents(out).count('"classification"') >= 1))
        finally:
            err = stop(proc)
        check("SIGTERM: exit 0", proc.returncode == 0, f"rc {proc.returncode}: {err}")
        reload_lines = [l for l in err.splitlines() if "reload:" in l]
        check("broken reload: one stderr line naming the model", len(reload_lines) == 1 and "no-model" in reload_lines[0],
              err)
        check("good reload: the model was swapped in", err.count("loaded") >= 1, err)
        first = read_events(contents(out + ".1"), "live, rotated file")
        second = read_events(contents(out), "live, new file")
        events = first + second
        cls = by_type(events, "classification")
        ports = sorted(e["src_port"] for e in cls)
        check("classified sessions 40001, 40002, 40003", ports == [40001, 40002, 40003], str(ports))
        trig = {e["src_port"]: e["classification"]["trigger"] for e in cls}
        check("triggers: packets, timeout, packets", trig == {40001: "packets", 40002: "timeout", 40003: "packets"},
              str(trig))
        flows = by_type(events, "flow")
        check("a flow event for each session, with verdict", all(any(f["src_port"] == p and f["flow"]["verdict"]
                                                                     for f in flows) for p in (40001, 40002)),
              str([(f["src_port"], f["flow"]) for f in flows]))
        stats = by_type(second, "stats")
        check("the new file ends with the final stats", bool(stats) and second[-1] is stats[-1])
        if stats:
            c = stats[-1]["stats"]["capture"]
            check("capture counted the packets", c["packets"] >= 21, str(c))
    no_model_and_stuck_notify()
    finish()


def no_model_and_stuck_notify():
    """--no-model live (a flow sensor) with a NOTIFY_SOCKET nobody reads and a 100 ms watchdog:
    the kernel queues 10 datagrams, then a blocking send would hang the manager thread, which
    handles SIGTERM. The sensor must still drain and exit at once, with flow events and no
    classification."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "eve.json")
        cfg = os.path.join(tmp, "netlm.conf")
        conf(cfg, out, MODEL, "")
        nsock = os.path.join(tmp, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(nsock)  # never read until the sensor has exited
        env = dict(os.environ, NOTIFY_SOCKET=nsock, WATCHDOG_USEC="100000")
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen([NETLM, "sensor", "-c", cfg, "--no-model", "--stats-interval", "0.2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            check("--no-model sensor starts and writes stats", wait_for(lambda: '"stats"' in contents(out)),
                  proc.stderr.read() if proc.poll() is not None else "no stats")
            send(40011, 10)
            send(40012, 2)
            check("--no-model: flow events for both sessions (at their idle timeout)",
                  wait_for(lambda: '"src_port":40011' in contents(out) and '"src_port":40012' in contents(out)))
            time.sleep(1.0)  # ~20 watchdog pings and 5 stats intervals: the unread queue is long full
            t0 = time.monotonic()
            err = stop(proc, 10)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        check(f"unread NOTIFY_SOCKET: SIGTERM still drains and exits 0 ({took:.2f} s)", proc.returncode == 0 and took < 5,
              f"rc {proc.returncode} after {took:.1f} s: {err}")
        notify.setblocking(False)
        msgs = []
        while True:
            try:
                msgs.append(notify.recv(4096).decode(errors="replace"))
            except BlockingIOError:
                break
        notify.close()
        check("the first notification was READY=1, then watchdog pings (the rest dropped, not waited for)",
              msgs and "READY=1" in msgs[0].split("\n") and any(m == "WATCHDOG=1" for m in msgs), str(msgs[:4]))
        ev = read_events(contents(out), "live --no-model")
        check("--no-model: no classification events", not by_type(ev, "classification"))
        flows = [f for f in by_type(ev, "flow") if f["src_port"] in (40011, 40012)]
        check("--no-model: flow events with the packets sent, verdict false",
              sorted((f["src_port"], f["flow"]["pkts_toserver"], f["flow"]["verdict"]) for f in flows)
              == [(40011, 10, False), (40012, 2, False)], str([(f["src_port"], f["flow"]) for f in flows]))
        st = by_type(ev, "stats")
        check("--no-model: ends with stats, sessions counters 0", bool(st) and ev[-1] is st[-1]
              and st[-1]["stats"]["sessions"] == {"ready": 0, "skipped": 0, "classified": 0})


if __name__ == "__main__":
    main()
