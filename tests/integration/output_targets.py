#!/usr/bin/python3
"""output_targets.py — where the commands' outputs go when the path is not a plain new file, and
what an output that fails part way leaves behind.

- `-o` naming a character device or a named pipe (replay, sessions, corpus): written in place, the
  node stays what it was (renaming a finished file over /dev/null would replace the device); a
  symbolic link: the file it names is replaced, the link stays; a folder: one error line; one of
  the input captures: refused, the capture untouched.
- captures in folders: files that are not pcap/pcapng (a README) are skipped with one warning
  line; named on the command line, such a file is still an error.
- replay to a unix stream socket: no listener is an error at start (every event would be lost);
  a listener that goes away during the run fails the run, exit 1.
- a run ended by SIGINT or SIGTERM while writing (classify -o): no temporary file left, no output.
- a full disk under a live sensor's events file: the file keeps whole lines only, and when space
  comes back the sensor says so and writes on, each line valid JSON.
The device nodes and the small filesystem need root; those parts are skipped without it."""
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sensor_common import DATA, MODEL, NETLM, SRC, check, contents, finish, one_line_error, stop, wait_for  # noqa: E402

DEMO = os.path.join(SRC, "data", "demo.pcap")
PORT = 39997


def run(*args, **kw):
    return subprocess.run([NETLM, *args], capture_output=True, text=True, timeout=300, **kw)


def json_lines(path):
    """The number of lines, all of which must parse as JSON and end with a newline."""
    text = open(path).read()
    if text and not text.endswith("\n"):
        raise ValueError("ends without a newline")
    lines = text.splitlines()
    for line in lines:
        json.loads(line)
    return len(lines)


def targets(tmp, root):
    """replay, sessions and corpus to a device, a named pipe, a symlink, a folder and their input."""
    capture = os.path.join(tmp, "input.pcap")
    original = open(DEMO, "rb").read()
    commands = {
        "replay": lambda out, *inputs: ("replay", "--no-model", "-q", "-o", out, *inputs),
        "sessions": lambda out, *inputs: ("sessions", "-o", out, *inputs),
        "corpus": lambda out, *inputs: ("corpus", "-q", "-o", out, *inputs),
    }
    for name, argv in commands.items():
        with open(capture, "wb") as f:  # each command its own, whatever the one before did
            f.write(original)
        if root:
            node = os.path.join(tmp, f"null-{name}")
            os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            res = run(*argv(node, capture))
            check(f"{name} -o a character device: exit 0", res.returncode == 0, res.stderr.strip())
            check(f"{name} -o a character device: still the device", stat.S_ISCHR(os.lstat(node).st_mode))

        fifo = os.path.join(tmp, f"fifo-{name}")
        os.mkfifo(fifo)
        got = []
        reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
        reader.start()
        res = run(*argv(fifo, capture))
        reader.join(60)
        check(f"{name} -o a named pipe: exit 0 and the reader gets the output",
              res.returncode == 0 and got and len(got[0]) > 0, res.stderr.strip())
        check(f"{name} -o a named pipe: still a pipe", stat.S_ISFIFO(os.lstat(fifo).st_mode))

        real = os.path.join(tmp, f"real-{name}")
        link = os.path.join(tmp, f"link-{name}")
        with open(real, "w") as f:
            f.write("old\n")
        os.symlink(os.path.basename(real), link)
        res = run(*argv(link, capture))
        check(f"{name} -o a symlink: exit 0, the link stays a link", res.returncode == 0 and os.path.islink(link),
              res.stderr.strip())
        check(f"{name} -o a symlink: the file it names holds the output", contents(real) not in ("", "old\n"))

        folder = os.path.join(tmp, f"folder-{name}")
        os.mkdir(folder)
        one_line_error(f"{name} -o a folder", run(*argv(folder, capture)), [f"folder-{name}", "folder"])

        one_line_error(f"{name} -o its own input", run(*argv(capture, capture)), ["input.pcap", "input"])
        check(f"{name} -o its own input: the capture untouched", open(capture, "rb").read() == original)
        leftovers = [f for f in os.listdir(tmp) if ".tmp." in f]
        check(f"{name}: no temporary file left", not leftovers, str(leftovers))


def folders(tmp):
    """a README among the captures of a folder is skipped with a warning; named, it is an error"""
    folder = os.path.join(tmp, "captures")
    os.mkdir(folder)
    with open(DEMO, "rb") as src, open(os.path.join(folder, "demo.pcap"), "wb") as dst:
        dst.write(src.read())
    readme = os.path.join(folder, "README.md")
    with open(readme, "w") as f:
        f.write("# where these captures come from\n")
    for args in (("sessions", folder), ("corpus", "-q", "-o", os.path.join(tmp, "corpus.txt"), folder)):
        res = run(*args)
        lines = res.stderr.strip().splitlines()
        check(f"{args[0]} of a folder with a README: exit 0, one warning naming it",
              res.returncode == 0 and len(lines) == 1 and "README.md" in lines[0] and "warning" in lines[0],
              res.stderr.strip())
    check("sessions of a folder with a README: the capture's sessions", len(run("sessions", folder).stdout) > 0)
    one_line_error("sessions of a README named on the command line", run("sessions", readme), ["README.md"])


def interrupted(tmp):
    """classify -o and preprocess ended by a signal while their output is being written"""
    pcaps = os.path.join(DATA, "pcaps")
    corpus = os.path.join(tmp, "big-corpus.txt")
    run("corpus", "-q", "-o", corpus, *([pcaps] * 6))
    for sig in (signal.SIGINT, signal.SIGTERM):
        for name, argv in (("classify", ["classify", "--model", MODEL, "-q", "-o", "out.tsv", *([pcaps] * 8)]),
                           ("preprocess", ["preprocess", "--corpus_path", corpus, "--dataset_path", "out.bin", "-q"])):
            out_dir = os.path.join(tmp, f"interrupted-{name}-{sig.name}")
            os.mkdir(out_dir)
            proc = subprocess.Popen([NETLM, *argv], cwd=out_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            started = wait_for(lambda: any(".tmp." in f for f in os.listdir(out_dir)) or proc.poll() is not None)
            proc.send_signal(sig)
            proc.communicate(timeout=120)
            check(f"{name} ended by {sig.name} while writing: ended by it", started and proc.returncode == -sig,
                  str(proc.returncode))
            check(f"{name} ended by {sig.name}: no temporary file, no output", os.listdir(out_dir) == [],
                  str(os.listdir(out_dir)))


def sockets(tmp):
    """replay to a unix stream socket: nobody listening, and a listener that leaves"""
    path = os.path.join(tmp, "events.sock")
    one_line_error("replay to a unix socket nobody listens on", run("replay", "--no-model", "-q", "-o", "unix:" + path,
                                                                      DEMO), ["events.sock", "connect"])
    big = os.path.join(DATA, "pcaps", "ndpi-quic_interop_V.pcapng")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def accept_and_leave():
        conn, _ = listener.accept()
        conn.close()
        listener.close()
    t = threading.Thread(target=accept_and_leave)
    t.start()
    # flow events of every session, written after the listener left: lost
    res = run("replay", "--no-model", "-q", "-o", "unix:" + path, *([big, DEMO] * 4))
    t.join(60)
    check("replay to a socket whose listener leaves: exit 1", res.returncode == 1, str(res.returncode))
    check("replay to a socket whose listener leaves: says events were lost", "lost" in res.stderr, res.stderr.strip())


def full_disk(tmp):
    """a live sensor's events file on a filesystem that fills up and then has room again"""
    small = os.path.join(tmp, "small")
    os.mkdir(small)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", small], capture_output=True).returncode != 0:
        print("skipped: full disk (cannot mount a tmpfs here)")
        return
    try:
        filler = os.path.join(small, "filler")
        with open(filler, "wb") as f:
            f.write(b"x" * 12288)
        out = os.path.join(small, "eve.json")
        cfg = os.path.join(tmp, "full.conf")
        with open(cfg, "w") as f:
            f.write(f"""capture = {{ interface = "lo"; bpf = "udp port {PORT}"; promiscuous = false; buffer_mb = 4; }};
model = {{ task = "none"; }};
output = {{ type = "file"; filename = "{out}"; stats_interval = 0.02; flow_events = true; }};
service = {{ user = ""; }};
""")
        proc = subprocess.Popen([NETLM, "sensor", "-c", cfg], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # stats events every 20 ms fill the 4 KB left within a second or two
            full = wait_for(lambda: os.path.exists(out) and os.path.getsize(out) > 3000, timeout=30)
            time.sleep(1.0)
            check("full disk: the events file filled the filesystem", full)
            check("full disk: only whole JSON lines while full", json_lines(out) > 0)
            before = json_lines(out)
            os.unlink(filler)
            grew = wait_for(lambda: json_lines(out) > before + 5, timeout=30)
            check("full disk: events written again once there is room", grew)
        finally:
            err = stop(proc)
        check("full disk: every line valid JSON at the end", json_lines(out) > before)
        check("full disk: the sensor said the disk was full and that it writes again",
              "No space left on device" in err and "writing again" in err, err.strip())
    finally:
        subprocess.run(["umount", small])


def main():
    root = os.geteuid() == 0
    with tempfile.TemporaryDirectory() as tmp:
        targets(tmp, root)
        folders(tmp)
        interrupted(tmp)
        sockets(tmp)
        if root and os.path.exists("/sys/class/net/lo"):
            full_disk(tmp)
        else:
            print("skipped: full disk (needs root: a tmpfs and live capture on lo)")
    finish()


if __name__ == "__main__":
    main()
