#!/usr/bin/python3
"""sensor_errors.py — what `netlm sensor` and `netlm replay` do with bad input: a bad config
(FILE:LINE in the message), --check-config, a missing model, an unknown interface, a reader count
out of range or too many readers for max_flows, an unreadable or missing capture, flags too long
for their key, and what only this machine can answer (a filter that does not compile, CPUs, users
and groups, the model directory, a CUDA device, the output's folder), refused by --check-config
and at start alike. Each ends with exactly one line on stderr naming the thing (the flag when a
flag set it), a non-zero exit (2 for usage and configuration), and no output file left behind.
Then what a running sensor or replay must survive: SIGUSR1, and (as root) the output file handed
to service.user so that SIGHUP can reopen it, and an interface that disappears, named once.
Replay applies capture.bpf and ignores the config's output section."""
import json
import os
import pwd
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sensor_common import MODEL, NETLM, SRC, check, contents, finish, one_line_error, stop, wait_for  # noqa: E402

ROOT = os.geteuid() == 0
NOBODY = ROOT and any(p.pw_name == "nobody" for p in pwd.getpwall())


def run(*args):
    return subprocess.run([NETLM, *args], capture_output=True, text=True, timeout=120)


def flags_too_long(out_dir, out):
    """--bpf and --user hold what capture.bpf (1023 bytes) and service.user (63) hold: a longer value
    is refused naming the flag, as the file's key would be, not cut to a shorter filter or name.
    This filter's first 1023 bytes are the filter "tcp"."""
    bpf = "tcp" + " " * 1021 + "or udp"
    res = run("sensor", "--check-config", "--bpf", bpf, "--no-model", "-o", out, "--user", "")
    one_line_error("--bpf of 1030 bytes", res, ["--bpf", "at most 1023 bytes", "1030"], out_dir, exit_codes=(2,))
    res = run("sensor", "--check-config", "--user", "u" * 70, "--no-model", "-o", out)
    one_line_error("--user of 70 bytes", res, ["--user", "at most 63 bytes", "70"], out_dir, exit_codes=(2,))


def refused_before_start(name, args, words, out_dir):
    """--check-config and a start (on lo) refuse it alike: exit 2, one line naming words, before
    anything is opened (so no output file, and as any user)."""
    for how in (["--check-config"], ["-i", "lo"]):
        one_line_error(f"{name} ({how[0]})", run("sensor", *args, *how), words, out_dir, exit_codes=(2,))


def machine_checks(tmp, out_dir, out):
    """What the values alone do not say, asked of this machine by --check-config and at start."""
    def conf(name, text):
        path = os.path.join(tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    flow_sensor = ("--no-model", "-o", out, "--user", "")
    refused_before_start("capture.bpf that does not compile",
                         ("-c", conf("bpf.conf", 'capture = { bpf = "tcp and and"; };\n'), *flow_sensor),
                         ["bpf.conf", "capture.bpf", "tcp and and", "syntax error"], out_dir)
    refused_before_start("--bpf that does not compile", ("--bpf", "tcp and and", *flow_sensor),
                         ["--bpf", "tcp and and"], out_dir)
    missing = os.path.join(tmp, "no-such-model")
    refused_before_start("model.path that does not exist",
                         ("-c", conf("model.conf", f'model = {{ path = "{missing}"; }};\n'), "-o", out, "--user", ""),
                         ["model.conf", "model.path", missing, "no such directory"], out_dir)
    refused_before_start("-m naming a file", ("-m", os.path.join(SRC, "data", "demo.pcap"), "-o", out, "--user", ""),
                         ["-m", "demo.pcap", "not a directory"], out_dir)
    if "CUDA backend no" in run("--version").stdout:
        refused_before_start("model.device \"cuda\" in a build without CUDA",
                             ("-c", conf("cuda.conf", 'model = { device = "cuda"; };\n'), "-m", MODEL, "-o", out,
                              "--user", ""), ["cuda.conf", "model.device", "without CUDA"], out_dir)
    nodir = os.path.join(tmp, "no-such-dir", "eve.json")
    refused_before_start("output.filename in a folder that does not exist",
                         ("-c", conf("output.conf", f'output = {{ filename = "{nodir}"; }};\n'), "--no-model",
                          "--user", ""), ["output.conf", "output.filename", "no-such-dir", "no such directory"], out_dir)
    refused_before_start("-o in a folder that does not exist", ("-o", nodir, "--no-model", "--user", ""),
                         ["-o", "no-such-dir"], out_dir)
    if ROOT:  # only a root start switches user, so only root's start and check look the user up
        refused_before_start("service.user that does not exist",
                             ("-c", conf("user.conf", 'service = { user = "nosuchuser0"; };\n'), "--no-model", "-o", out),
                             ["user.conf", "service.user", "nosuchuser0", "no such user"], out_dir)
        refused_before_start("--user that does not exist", ("--user", "nosuchuser0", "--no-model", "-o", out),
                             ["--user", "nosuchuser0"], out_dir)
    if NOBODY:
        refused_before_start("service.group that does not exist",
                             ("-c", conf("group.conf", 'service = { user = "nobody"; group = "nosuchgroup0"; };\n'),
                              "--no-model", "-o", out), ["group.conf", "service.group", "nosuchgroup0"], out_dir)
        res = run("sensor", "--check-config", "--user", "nobody", "--no-model", "-o", out)
        check("--check-config with --user nobody: ok", res.returncode == 0, res.stderr.strip())


def wrong_names(demo, out):
    """Messages name what the user wrote."""
    res = run("replay", "--ready-packets", "2000", "--no-model", demo)
    one_line_error("--ready-packets 2000", res, ["--ready-packets", "1024", "2000"], exit_codes=(2,))
    check("--ready-packets 2000: not blamed on flow.packets_per_session", "packets_per_session" not in res.stderr,
          res.stderr.strip())
    res = run("sensor", "--check-config", "-o", "", "--no-model", "--user", "")
    one_line_error("-o ''", res, ["-o"], exit_codes=(2,))
    check("-o '': not blamed on output.filename", "output.filename" not in res.stderr, res.stderr.strip())


def event_types(lines):
    return [json.loads(line)["event_type"] for line in lines]


def protos(stdout):
    events = [json.loads(line) for line in stdout.splitlines()]
    return {e["proto"] for e in events if e["event_type"] == "flow"}


def replay_config(tmp, demo):
    """replay applies capture.bpf to the files' frames, refuses one that does not compile, and takes a
    config whose output section it does not use (unix_stream without a socket) as it is."""
    res = run("replay", "--no-model", "-q", demo)
    check("replay without a filter: demo.pcap has TCP and UDP flows", protos(res.stdout) == {"TCP", "UDP"},
          str(protos(res.stdout)))
    conf = os.path.join(tmp, "replay.conf")
    with open(conf, "w") as f:
        f.write('capture = { bpf = "tcp"; };\noutput = { type = "unix_stream"; };\n')
    res = run("replay", "-c", conf, "--no-model", "-q", demo)
    check("replay with output.type unix_stream and no socket: exit 0", res.returncode == 0, res.stderr.strip())
    check("replay with capture.bpf = \"tcp\": TCP flows only", protos(res.stdout) == {"TCP"}, str(protos(res.stdout)))
    with open(conf, "w") as f:
        f.write('capture = { bpf = "tcp and and"; };\n')
    one_line_error("replay with a capture.bpf that does not compile", run("replay", "-c", conf, "--no-model", demo),
                   ["replay.conf", "capture.bpf", "tcp and and"], exit_codes=(2,))


def write_udp_flows(path, n):
    """A pcap of n one-packet UDP flows (Ethernet, IPv4)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(n):
            udp = struct.pack("!HHHH", 10000 + i % 50000, 53, 12, 0) + b"abcd"
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                             bytes([10, 1, (i >> 8) & 0xFF, i & 0xFF]), bytes([10, 2, 0, 1]))
            frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + udp
            f.write(struct.pack("<IIII", 1700000000 + i // 1000, (i % 1000) * 1000, len(frame), len(frame)) + frame)


def signals(tmp, demo):
    """SIGUSR1 is logged as ignored; sensor and replay go on and end as usual (rc 0, the final stats
    event written, no temporary file left)."""
    # replay: 20,000 flow events to a unix socket nobody reads yet keep it waiting (and running)
    # while the signal is handled; it connects once its handlers are in place
    pcap = os.path.join(tmp, "flows.pcap")
    write_udp_flows(pcap, 20000)
    sock_path = os.path.join(tmp, "collector.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    srv.settimeout(60)
    err_path = os.path.join(tmp, "replay.err")
    with open(err_path, "w") as err_f:
        proc = subprocess.Popen([NETLM, "replay", "--no-model", "-q", "-o", "unix:" + sock_path, pcap],
                                stdout=subprocess.DEVNULL, stderr=err_f)
    data = b""
    try:
        conn, _ = srv.accept()
        proc.send_signal(signal.SIGUSR1)
        check("replay: SIGUSR1 logged as ignored", wait_for(lambda: "SIGUSR1: ignored" in contents(err_path)),
              contents(err_path).strip())
        conn.settimeout(60)
        while chunk := conn.recv(1 << 16):
            data += chunk
        conn.close()
        proc.wait(timeout=60)
    finally:
        srv.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = data.decode(errors="replace").splitlines()
    check("replay after SIGUSR1: exit 0", proc.returncode == 0, f"rc {proc.returncode}: {contents(err_path).strip()}")
    check("replay after SIGUSR1: every flow event, then the final stats",
          event_types(lines) == ["flow"] * 20000 + ["stats"], f"{len(lines)} lines")
    check("replay after SIGUSR1: one line on stderr", len(contents(err_path).strip().splitlines()) == 1,
          contents(err_path).strip())

    if not ROOT:  # live capture on lo needs root
        return
    out = os.path.join(tmp, "usr1.json")
    proc = subprocess.Popen([NETLM, "sensor", "-i", "lo", "--no-model", "-o", out, "--user", "", "--stats-interval",
                             "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        check("sensor: starts and writes stats", wait_for(lambda: '"stats"' in contents(out)))
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        check("sensor: still running after SIGUSR1", proc.poll() is None, f"rc {proc.returncode}")
    finally:
        err = stop(proc)
    check("sensor after SIGUSR1: SIGTERM drains, exit 0", proc.returncode == 0, f"rc {proc.returncode}: {err}")
    ignored = [line for line in err.splitlines() if "SIGUSR1" in line]
    check("sensor: one line says SIGUSR1 is ignored and what SIGHUP and SIGUSR2 do",
          len(ignored) == 1 and "ignored" in ignored[0] and "SIGHUP" in ignored[0] and "SIGUSR2" in ignored[0], err)
    check("sensor after SIGUSR1: the output ends with the final stats",
          event_types(contents(out).splitlines())[-1:] == ["stats"])


def output_given_to_service_user():
    """Root with --user nobody: the events file, created as root, is handed to nobody before the
    switch, so that SIGHUP's reopen (logrotate's copytruncate, or a HUP without a rename) works."""
    if not NOBODY:
        print("skipped: the output handed to service.user needs root and the user nobody")
        return
    nobody = pwd.getpwnam("nobody")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # nobody reaches the file, but may not create files here
        out = os.path.join(tmp, "eve.json")
        proc = subprocess.Popen([NETLM, "sensor", "-i", "lo", "--no-model", "-o", out, "--user", "nobody",
                                 "--stats-interval", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            check("--user nobody: starts and writes stats", wait_for(lambda: '"stats"' in contents(out)))
            st = os.stat(out)
            check("--user nobody: the output file belongs to nobody and its group",
                  (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), f"{st.st_uid}:{st.st_gid}")
            os.truncate(out, 0)  # copytruncate
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
            check("--user nobody: after SIGHUP the sensor writes on", wait_for(lambda: '"stats"' in contents(out)))
        finally:
            err = stop(proc)
        check("--user nobody: exit 0", proc.returncode == 0, f"rc {proc.returncode}: {err}")
        check("--user nobody: SIGHUP reopened the file (no error, no warning)",
              "cannot" not in err and "warning" not in err, err)


def interface_disappears():
    """An interface deleted under the sensor ends it with one line that names the interface once."""
    name = f"nlmgone{os.getpid() % 10000}"
    res = subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], capture_output=True,
                         text=True)
    if res.returncode != 0:
        print(f"skipped: cannot create a veth pair ({res.stderr.strip()})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "eve.json")
        proc = None
        try:
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
            proc = subprocess.Popen([NETLM, "sensor", "-i", name, "--no-model", "-o", out, "--user", "",
                                     "--stats-interval", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
            check(f"{name}: sensor starts", wait_for(lambda: '"stats"' in contents(out)))
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            _, err = proc.communicate(timeout=30)
        finally:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            if proc and proc.poll() is None:
                proc.kill()
                proc.communicate()
        lost = [line for line in err.splitlines() if "capture failed" in line]
        check("interface deleted: exit 1", proc.returncode == 1, f"rc {proc.returncode}: {err}")
        check("interface deleted: one line naming the interface once",
              len(lost) == 1 and lost[0].startswith(f"netlm sensor: {name}: capture failed"), err)


def main():
    demo = os.path.join(SRC, "data", "demo.pcap")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = os.path.join(tmp, "out")
        os.mkdir(out_dir)
        out = os.path.join(out_dir, "eve.json")

        bad = os.path.join(tmp, "bad.conf")
        with open(bad, "w") as f:
            f.write("# a comment\nflow = {\n  workers = \"two\";\n};\n")
        res = run("sensor", "-c", bad, "--check-config")
        one_line_error("bad config (--check-config)", res, ["bad.conf:3", "workers"])
        check("bad config: exit 2", res.returncode == 2, str(res.returncode))
        res = run("sensor", "-c", bad, "-i", "lo", "-m", MODEL, "-o", out)
        one_line_error("bad config (sensor)", res, ["bad.conf:3"], out_dir)
        res = run("replay", "-c", bad, "-m", MODEL, "-o", out, demo)
        one_line_error("bad config (replay)", res, ["bad.conf:3"], out_dir)

        # the shipped file is valid; what it names on this machine (the installed model, /var/log/netlm, the netlm
        # user) is overridden: those are checked too
        here = ("-m", MODEL, "-o", out, "--user", "")
        res = run("sensor", "-c", os.path.join(SRC, "config", "netlm.conf"), "--check-config", *here)
        check("--check-config on config/netlm.conf: exit 0", res.returncode == 0, res.stderr.strip())
        check("--check-config prints 'FILE: ok'", res.stdout.strip().endswith("netlm.conf: ok"), res.stdout)
        # a DPDK source is only "ok" where this build can capture with DPDK
        res = run("sensor", "-i", "dpdk:net_null0", "--check-config", *here)
        if "DPDK no" in run("--version").stdout:
            one_line_error("--check-config of a DPDK source in a build without DPDK", res,
                           ["capture.source", "without DPDK"])
        else:
            check("--check-config of a DPDK source in a build with DPDK: ok", res.returncode == 0 and
                  res.stdout.strip().endswith(": ok"), res.stdout + res.stderr)

        missing = os.path.join(tmp, "no-such-model")
        one_line_error("missing model (replay)", run("replay", "-m", missing, "-o", out, demo), [missing], out_dir)
        one_line_error("missing model (sensor)", run("sensor", "-i", "lo", "-m", missing, "-o", out), [missing], out_dir,
                       exit_codes=(2,))
        # no -m and no model.path: the installed bundled model, which a build tree does not have
        res = run("replay", "-o", out, demo)
        if res.returncode != 0:
            one_line_error("default model not installed", res, ["-m"], out_dir)

        one_line_error("unknown interface", run("sensor", "-i", "nosuchif0", "-m", MODEL, "-o", out, "--user", ""),
                       ["nosuchif0"], out_dir)
        one_line_error("unknown interface, flow sensor", run("sensor", "-i", "nosuchif0", "--no-model", "-o", out,
                                                              "--user", ""), ["nosuchif0"], out_dir)
        # capture.interface holds 63 bytes: a longer name is refused, not cut to another interface's
        res = run("sensor", "-i", "x" * 64, "--check-config")
        one_line_error("-i with a 64-byte name", res, ["--interface", "63 bytes"])
        check("-i with a 64-byte name: exit 2", res.returncode == 2, str(res.returncode))
        for readers in ("0", "65", "two"):
            res = run("sensor", "-i", "lo", "--readers", readers, "--check-config")
            one_line_error(f"--readers {readers}", res, ["--readers"])
            check(f"--readers {readers}: exit 2", res.returncode == 2, str(res.returncode))
        # readers share max_flows: each of 4 readers with 2 workers needs 16 flows a worker
        res = run("sensor", "-i", "lo", "--readers", "4", "-w", "2", "-c", os.path.join(SRC, "config", "netlm.conf"),
                  "--check-config", *here)
        check("--readers 4 -w 2 with the shipped config: ok", res.returncode == 0, res.stderr.strip())
        small = os.path.join(tmp, "small.conf")
        with open(small, "w") as f:
            f.write("flow = { max_flows = 100; workers = 2; };\n")
        one_line_error("--readers 4 with too few flows for 8 workers", run("sensor", "-c", small, "--readers", "4",
                       "--check-config"), ["flow.max_flows", "capture.readers = 4", "128"])
        cpus = os.path.join(tmp, "cpus.conf")
        with open(cpus, "w") as f:
            f.write("capture = {\n  readers = 2;\n  cpus = \"0-\";\n};\n")
        res = run("sensor", "-c", cpus, "--check-config")
        one_line_error("capture.cpus not a list", res, ["cpus.conf:3", "capture.cpus", "2-5,8"])
        check("capture.cpus not a list: exit 2", res.returncode == 2, str(res.returncode))
        with open(cpus, "w") as f:
            f.write("capture = { readers = 2; cpus = \"0,1023\"; };\nservice = { user = \"\"; };\n")
        for how in (["--check-config"], ["-i", "lo"]):
            one_line_error(f"capture.cpus with a CPU this process may not run on ({how[0]})",
                           run("sensor", "-c", cpus, "--no-model", "-o", out, *how),
                           ["cpus.conf", "capture.cpus", "CPU 1023", "may run on"], out_dir, exit_codes=(2,))

        garbage = os.path.join(tmp, "garbage.pcap")
        with open(garbage, "wb") as f:
            f.write(b"this is not a capture file at all\n" * 10)
        one_line_error("unreadable capture", run("replay", "-m", MODEL, "-o", out, garbage), ["garbage.pcap"], out_dir)
        one_line_error("unreadable capture after a good one",
                       run("replay", "-m", MODEL, "-o", out, demo, garbage), ["garbage.pcap"], out_dir)
        nofile = os.path.join(tmp, "nosuch.pcap")
        one_line_error("missing capture", run("replay", "-m", MODEL, "-o", out, nofile), ["nosuch.pcap"], out_dir)
        if os.geteuid() != 0:  # root reads anything: permissions cannot make a file unreadable
            noread = os.path.join(tmp, "noread.pcap")
            with open(demo, "rb") as src, open(noread, "wb") as dst:
                dst.write(src.read())
            os.chmod(noread, 0)
            one_line_error("capture without read permission", run("replay", "-m", MODEL, "-o", out, noread),
                           ["noread.pcap"], out_dir)
        res = run("replay", "-m", MODEL, "--ready-packets", "0", demo)
        one_line_error("--ready-packets 0", res, ["--ready-packets"])
        res = run("sensor", "-o", "unix:", "-m", MODEL)
        one_line_error("-o unix: without a path", res, ["unix:"])

        flags_too_long(out_dir, out)
        machine_checks(tmp, out_dir, out)
        wrong_names(demo, out)
        replay_config(tmp, demo)
        signals(tmp, demo)
    if ROOT:
        output_given_to_service_user()
        interface_disappears()
    finish()


if __name__ == "__main__":
    main()
