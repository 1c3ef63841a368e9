#!/usr/bin/python3
"""sensor_errors.py — what `netlm sensor` and `netlm replay` do with bad input: a bad config
(FILE:LINE in the message), --check-config, a missing model, an unknown interface, a reader count
out of range or too many readers for max_flows, an unreadable or missing capture. Each ends with exactly one line on stderr naming the thing, a non-zero exit,
and no output file left behind."""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sensor_common import MODEL, NETLM, SRC, check, finish, one_line_error  # noqa: E402


def run(*args):
    return subprocess.run([NETLM, *args], capture_output=True, text=True, timeout=120)


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

        res = run("sensor", "-c", os.path.join(SRC, "config", "netlm.conf"), "--check-config")
        check("--check-config on config/netlm.conf: exit 0", res.returncode == 0, res.stderr.strip())
        check("--check-config prints 'FILE: ok'", res.stdout.strip().endswith("netlm.conf: ok"), res.stdout)
        # a DPDK source is only "ok" where this build can capture with DPDK
        res = run("sensor", "-i", "dpdk:net_null0", "--check-config")
        if "DPDK no" in run("--version").stdout:
            one_line_error("--check-config of a DPDK source in a build without DPDK", res,
                           ["capture.source", "without DPDK"])
        else:
            check("--check-config of a DPDK source in a build with DPDK: ok", res.returncode == 0 and
                  res.stdout.strip().endswith(": ok"), res.stdout + res.stderr)

        missing = os.path.join(tmp, "no-such-model")
        one_line_error("missing model (replay)", run("replay", "-m", missing, "-o", out, demo), [missing], out_dir)
        one_line_error("missing model (sensor)", run("sensor", "-i", "lo", "-m", missing, "-o", out), [missing], out_dir)
        # no -m and no model.path: the installed bundled model, which a build tree does not have
        res = run("replay", "-o", out, demo)
        if res.returncode != 0:
            one_line_error("default model not installed", res, ["-m"], out_dir)

        one_line_error("unknown interface", run("sensor", "-i", "nosuchif0", "-m", MODEL, "-o", out),
                       ["nosuchif0"], out_dir)
        one_line_error("unknown interface, nothing else given", run("sensor", "-i", "nosuchif0"), ["nosuchif0"])
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
                  "--check-config")
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
        res = run("sensor", "-c", cpus, "-i", "lo", "--no-model", "-o", out)
        one_line_error("capture.cpus with a CPU this process may not run on", res,
                       ["capture.cpus", "CPU 1023", "may run on"], out_dir)
        check("capture.cpus with a CPU this process may not run on: exit 1", res.returncode == 1, str(res.returncode))

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
    finish()


if __name__ == "__main__":
    main()
