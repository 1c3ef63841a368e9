#!/usr/bin/python3
"""names_and_inputs.py — file names as Linux has them (bytes), inputs that are not plain files,
inputs given twice, and session times that step back.

- JSON (sessions -f json, classify --format json on captures, replay's flow events): every line
  decodes as strict UTF-8 and parses with Python's json module, and each file name reads back as
  Python's own decoder gives it (bytes.decode("utf-8", "replace")): Latin-1, cut, overlong and
  surrogate sequences, quotes, backslashes and control bytes.
- TSV (sessions, classify on captures, dataset_index.tsv): names with tabs, newlines, carriage
  returns and backslashes keep every row at the header's column count, and the escaped column
  reads back as the name on disk.
- Streams: "-" (a redirected file, a pipe) and a named pipe give the sessions, corpus and
  classification of the file itself; "-" twice is an error; replay, which opens its inputs twice,
  refuses them with one line; the progress line of an input of unknown size has no share.
- A file given twice (by name, through its folder, a hard or a symbolic link) is read once with
  one warning line: the sessions equal those of one reading.
- A session whose packets step back in time: start and end are the earliest and latest packet
  times that tshark's fields give, in sessions and in replay's flow events.
"""
import datetime
import decimal
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check, finish  # noqa: E402

NETLM = os.environ["NETLM"]
DATA = os.environ["NETLM_DATA_DIR"]
SRC = os.environ.get("NETLM_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODEL = os.path.join(SRC, "models", "ustc-tfc2016")
ONE = os.path.join(DATA, "pcaps", "tcpdump-dns_tcp.pcap")          # one TCP session, 11 frames
MANY = os.path.join(DATA, "pcaps", "ndpi-KakaoTalk_chat.pcap")     # TCP and UDP sessions

# Names that break a naive writer, each a copy of ONE.
NAMES = [b"caf\xe9.pcap",              # Latin-1
         b"cut\xe2\x82-end.pcap",      # a 3-byte sequence cut after 2 bytes
         b"over\xc0\xaf.pcap",         # overlong '/'
         b"surr\xed\xa0\x80.pcap",     # a UTF-16 surrogate
         b"big\xf4\x90\x80\x80.pcap",  # past U+10FFFF
         b"euro\xe2\x82\xac.pcap",     # valid UTF-8
         b'q"uote\\back.pcap',
         b"tab\there.pcap", b"nl\nhere.pcap", b"cr\rhere.pcap", b"ctl\x01\x7f.pcap"]


def run(*args, stdin=None, input=None):
    """netlm with args (str or bytes), output as bytes."""
    return subprocess.run([NETLM, *args], stdin=stdin, input=input, capture_output=True)


def json_lines(out):
    """Each line strictly decoded, then parsed; raises on the first bad one."""
    return [json.loads(line.decode("utf-8")) for line in out.splitlines()]


def try_json_lines(name, out):
    try:
        return json_lines(out)
    except (UnicodeDecodeError, ValueError) as e:
        check(name, False, repr(e))
        return None


def tsv_unescape(field):
    """The reverse of netlm's TSV escaping (docs/sessions.md), written out here, not shared."""
    out, i = bytearray(), 0
    while i < len(field):
        c = field[i:i + 1]
        if c == b"\\" and i + 1 < len(field):
            out += {b"t": b"\t", b"n": b"\n", b"r": b"\r", b"\\": b"\\"}[field[i + 1:i + 2]]
            i += 2
        else:
            out += c
            i += 1
    return bytes(out)


def tsv_rows(out):
    return [line.split(b"\t") for line in out.split(b"\n") if line]


def stderr_lines(res):
    return res.stderr.decode("utf-8", "replace").strip().splitlines()


def sorted_rows(out, drop_file=True):
    """TSV rows as sortable tuples, the file column left out (a stream is named "-")."""
    return sorted(tuple(r[:-1] if drop_file else r) for r in tsv_rows(out))


def test_json_names(tmp):
    folder = os.path.join(tmp, "names").encode()
    os.mkdir(folder)
    data = open(ONE, "rb").read()
    paths = []
    for n in NAMES:
        p = os.path.join(folder, n)
        open(p, "wb").write(data)
        paths.append(p)
    want = sorted(p.decode("utf-8", "replace") for p in paths)

    res = run("sessions", "-q", "-f", "json", folder)
    rows = try_json_lines("sessions -f json: every line is UTF-8 JSON", res.stdout)
    if rows is not None:
        check("sessions -f json: every line is UTF-8 JSON", res.returncode == 0, stderr_lines(res))
        got = sorted(r["pcap_filename"] for r in rows)
        check("sessions -f json: pcap_filename is the name as Python decodes it", got == want, (got, want))

    res = run("classify", "-m", MODEL, "--format", "json", "-q", "-t", "2", folder)
    rows = try_json_lines("classify --format json: every line is UTF-8 JSON", res.stdout)
    if rows is not None:
        check("classify --format json: every line is UTF-8 JSON", res.returncode == 0, stderr_lines(res))
        got = sorted(r["file"] for r in rows)
        check("classify --format json: file is the name as Python decodes it", got == want, (got, want))

    res = run("replay", "--no-model", "-q", folder)
    rows = try_json_lines("replay: every event is UTF-8 JSON", res.stdout)
    if rows is not None:
        got = sorted(r["pcap_filename"] for r in rows if r["event_type"] == "flow")
        check("replay: flow events' pcap_filename is the name as Python decodes it", got == want, (got, want))

    # TSV: the same names, escaped
    res = run("sessions", "-q", "--header", folder)
    rows = tsv_rows(res.stdout)
    widths = {len(r) for r in rows}
    check("sessions TSV: every row has the header's 15 columns", res.returncode == 0 and widths == {15},
          (widths, stderr_lines(res)))
    if widths == {15}:
        got = sorted(tsv_unescape(r[14]) for r in rows[1:])
        check("sessions TSV: the file column reads back as the name on disk", got == sorted(paths), got)

    res = run("classify", "-m", MODEL, "-q", "-t", "2", folder)
    rows = tsv_rows(res.stdout)
    widths = {len(r) for r in rows}
    check("classify TSV: every row has the header's 12 columns", res.returncode == 0 and widths == {12},
          (widths, stderr_lines(res)))
    if widths == {12}:
        got = sorted(tsv_unescape(r[0]) for r in rows[1:])
        check("classify TSV: the file column reads back as the name on disk", got == sorted(paths), got)


def test_dataset_index(tmp):
    root = os.path.join(tmp, "classes").encode()
    classes = [b"plain", b"tab\tclass", b"back\\slash"]
    data = open(ONE, "rb").read()
    files = []
    for c in classes:
        os.makedirs(os.path.join(root, c))
        for n in (b"a\tb.pcap", b"new\nline.pcap", b"c.pcap"):
            p = os.path.join(root, c, n)
            open(p, "wb").write(data)
            files.append(p)
    out = os.path.join(tmp, "ds")
    res = run("dataset", "understanding", "--quiet", "--pcap_path", root, "--dataset_dir", out)
    if not check("dataset: class folders and files with tabs and newlines in their names", res.returncode == 0,
                 stderr_lines(res)):
        return
    rows = tsv_rows(open(os.path.join(out, "dataset_index.tsv"), "rb").read())
    widths = {len(r) for r in rows}
    check("dataset_index.tsv: every row has the header's 12 columns", widths == {12} and len(rows) == 1 + len(files),
          (widths, len(rows)))
    if widths == {12}:
        got = sorted((tsv_unescape(r[2]), tsv_unescape(r[3])) for r in rows[1:])
        want = sorted((os.path.basename(os.path.dirname(p)), p) for p in files)
        check("dataset_index.tsv: class and file columns read back as the names on disk", got == want, got)
    classes_txt = open(os.path.join(out, "classes.txt"), "rb").read().split(b"\n")[:-1]
    check("dataset: classes.txt names each class on its line", classes_txt == sorted(classes), classes_txt)

    os.makedirs(os.path.join(root, b"line\nbreak"))
    open(os.path.join(root, b"line\nbreak", b"x.pcap"), "wb").write(data)
    res = run("dataset", "understanding", "--quiet", "--pcap_path", root, "--dataset_dir", os.path.join(tmp, "ds2"))
    lines = stderr_lines(res)
    check("dataset: a class folder with a line break in its name is refused with one line",
          res.returncode == 1 and len(lines) == 1 and "line break" in lines[0] and not os.path.exists(os.path.join(tmp, "ds2")),
          (res.returncode, lines))


def feed_fifo(path, data, delay=0.0):
    """Writes data into the named pipe path once a reader opens it; join() returns even when
    netlm never opened it (the pipe is then opened here, so that the writer does not wait)."""
    def writer():
        try:
            with open(path, "wb") as f:
                time.sleep(delay)
                f.write(data)
        except BrokenPipeError:
            pass  # the reader stopped early: its run says so

    t = threading.Thread(target=writer)
    t.start()
    join = t.join

    def join_unblocking():
        join(timeout=0.5)
        while t.is_alive():
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            join(timeout=0.5)
            os.close(fd)
    t.join = join_unblocking
    return t


def test_streams(tmp):
    data = open(MANY, "rb").read()
    base = run("sessions", "-q", "--no-timeouts", MANY)
    want = sorted_rows(base.stdout)
    check("sessions of the file itself", base.returncode == 0 and len(want) > 5, (len(want), stderr_lines(base)))

    with open(MANY, "rb") as f:
        res = run("sessions", "-q", "--no-timeouts", "-", stdin=f)
    check("sessions - < file: the file's sessions", res.returncode == 0 and sorted_rows(res.stdout) == want,
          stderr_lines(res))
    files = {r[-1] for r in tsv_rows(res.stdout)}
    check("sessions - < file: the file column says -", files == {b"-"}, files)

    res = run("sessions", "-q", "--no-timeouts", "-", input=data)
    check("sessions - from a pipe: the file's sessions", res.returncode == 0 and sorted_rows(res.stdout) == want,
          stderr_lines(res))

    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    t = feed_fifo(fifo, data)
    res = run("sessions", "-q", "--no-timeouts", fifo)
    t.join()
    check("sessions NAMED-PIPE: the file's sessions", res.returncode == 0 and sorted_rows(res.stdout) == want,
          stderr_lines(res))

    # a pipe that carries no capture: one line saying so, at once (reopening the pipe to explain
    # the failure would wait for a writer that has gone)
    os.unlink(fifo)
    os.mkfifo(fifo)
    t = feed_fifo(fifo, b"this is not a capture\n")
    try:
        res = subprocess.run([NETLM, "sessions", "-q", fifo], capture_output=True, timeout=20)
        lines = stderr_lines(res)
        check("sessions NAMED-PIPE of text: one line naming it, not a capture",
              res.returncode != 0 and len(lines) == 1 and "not a pcap or pcapng" in lines[0], lines)
    except subprocess.TimeoutExpired:
        check("sessions NAMED-PIPE of text: one line naming it, not a capture", False, "no answer in 20 s")
    t.join()
    res = run("sessions", "-q", "-", input=b"")
    lines = stderr_lines(res)
    check("sessions - of nothing: one line, empty input",
          res.returncode != 0 and len(lines) == 1 and "empty input" in lines[0], lines)

    res = run("sessions", "-q", "-", "-", input=data)
    lines = stderr_lines(res)
    check("sessions - -: an error in one line, nothing written",
          res.returncode != 0 and len(lines) == 1 and "standard input" in lines[0] and not res.stdout, lines)

    corpus = run("corpus", "-q", MANY)
    res = run("corpus", "-q", "-", input=data)
    check("corpus -: the file's corpus, byte for byte",
          corpus.returncode == 0 and res.returncode == 0 and res.stdout == corpus.stdout and len(corpus.stdout) > 0,
          stderr_lines(res))

    cls = run("classify", "-m", MODEL, "-q", "-t", "2", MANY)
    res = run("classify", "-m", MODEL, "-q", "-t", "2", "-", input=data)
    drop_first = lambda out: sorted(tuple(r[1:]) for r in tsv_rows(out)[1:])  # noqa: E731
    check("classify -: the file's classifications",
          cls.returncode == 0 and res.returncode == 0 and drop_first(res.stdout) == drop_first(cls.stdout)
          and len(drop_first(cls.stdout)) > 5, stderr_lines(res))

    # replay opens every input before the first event, to stop at a bad one: a stream stays open
    events = lambda out: sorted(json.dumps({k: v for k, v in e.items() if k != "pcap_filename"}, sort_keys=True)  # noqa: E731
                                for e in json_lines(out) if e["event_type"] == "flow")
    ref = run("replay", "--no-model", "-q", MANY)
    res = run("replay", "--no-model", "-q", "-", input=data)
    check("replay -: the file's flow events", res.returncode == 0 and ref.returncode == 0
          and events(res.stdout) == events(ref.stdout) and events(ref.stdout), stderr_lines(res))
    os.unlink(fifo)
    os.mkfifo(fifo)
    t = feed_fifo(fifo, data)
    res = run("replay", "--no-model", "-q", fifo)
    t.join()
    check("replay NAMED-PIPE: the file's flow events", res.returncode == 0
          and events(res.stdout) == events(ref.stdout), stderr_lines(res))

    # the progress line of an input of unknown size: bytes and rates, no share, no ETA (a run
    # of over a second always prints its final line)
    os.unlink(fifo)
    os.mkfifo(fifo)
    t = feed_fifo(fifo, data, delay=1.2)
    res = run("sessions", fifo)
    t.join()
    lines = stderr_lines(res)
    check("progress of a pipe: one final line without a share",
          res.returncode == 0 and len(lines) == 1 and lines[0].startswith("sessions: ") and "frames" in lines[0]
          and "%" not in lines[0] and "ETA" not in lines[0] and "done" in lines[0], lines)


def test_repeated(tmp):
    folder = os.path.join(tmp, "twice")
    os.mkdir(folder)
    a = os.path.join(folder, "a.pcap")
    b = os.path.join(folder, "b.pcap")
    open(a, "wb").write(open(MANY, "rb").read())
    open(b, "wb").write(open(ONE, "rb").read())

    def case(name, args, once, dup):
        ref = run("sessions", "-q", "--no-timeouts", *once)
        res = run("sessions", "-q", "--no-timeouts", *args)
        lines = stderr_lines(res)
        check(f"{name}: the sessions of one reading",
              res.returncode == 0 and ref.returncode == 0 and sorted_rows(res.stdout, False) == sorted_rows(ref.stdout, False)
              and ref.stdout, (len(tsv_rows(res.stdout)), len(tsv_rows(ref.stdout))))
        check(f"{name}: one warning line naming the repeated input",
              len(lines) == 1 and "warning" in lines[0] and dup in lines[0] and "read once" in lines[0], lines)

    case("a file named twice", [a, a], [a], a)
    case("a folder and a file in it", [folder, a], [folder], a)
    hard = os.path.join(tmp, "hard.pcap")
    os.link(a, hard)
    case("a file and its hard link", [a, hard], [a], hard)
    soft = os.path.join(tmp, "soft.pcap")
    os.symlink(a, soft)
    case("a file and a symbolic link to it", [soft, folder], [soft, b], a)

    ref = run("replay", "--no-model", "-q", a)
    res = run("replay", "--no-model", "-q", a, a)
    flows = lambda out: sorted((e["flow_id"], e["flow"]["pkts_toserver"]) for e in json_lines(out)  # noqa: E731
                               if e["event_type"] == "flow")
    check("replay of a file named twice: the flow events of one reading",
          res.returncode == 0 and flows(res.stdout) == flows(ref.stdout) and flows(ref.stdout), stderr_lines(res))

    # the same capture in two class folders: its sessions would get two labels
    classes = os.path.join(tmp, "one-capture-two-classes")
    for c in ("A", "B"):
        os.makedirs(os.path.join(classes, c))
    shutil.copy(MANY, os.path.join(classes, "A", "many.pcap"))
    shutil.copy(ONE, os.path.join(classes, "B", "one.pcap"))
    os.link(os.path.join(classes, "A", "many.pcap"), os.path.join(classes, "B", "also-many.pcap"))
    out = os.path.join(tmp, "two-labels")
    res = run("dataset", "understanding", "--pcap_path", classes, "--dataset_dir", out, "-q")
    lines = stderr_lines(res)
    check("dataset: a capture in two class folders is refused in one line naming both",
          res.returncode != 0 and len(lines) == 1 and "many.pcap" in lines[0] and "also-many.pcap" in lines[0]
          and "classes A and B" in lines[0] and not os.path.exists(out), lines)


def write_pcap(path, records):
    """A microsecond pcap (Ethernet) of (seconds, microseconds, frame) records."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for sec, usec, frame in records:
            f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)


def read_pcap(path):
    """The records of a little-endian microsecond pcap of link type Ethernet."""
    raw = open(path, "rb").read()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", raw)
    assert magic == 0xA1B2C3D4 and linktype == 1, (hex(magic), linktype)
    out, off = [], 24
    while off + 16 <= len(raw):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", raw, off)
        out.append((sec, usec, raw[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    return out


def test_time_backwards(tmp):
    # The second half of ONE's one session ten seconds earlier than the first: merged captures
    # from two clocks look like this.
    recs = read_pcap(ONE)
    back = [(s - 10 if i >= 5 else s, u, fr) for i, (s, u, fr) in enumerate(recs)]
    path = os.path.join(tmp, "back.pcap")
    write_pcap(path, back)
    out = subprocess.run(["tshark", "-n", "-r", path, "-T", "fields", "-e", "tcp.stream", "-e", "frame.time_epoch"],
                         capture_output=True, text=True, check=True).stdout
    times = [decimal.Decimal(line.split("\t")[1]) for line in out.splitlines() if line.split("\t")[0] == "0"]
    check("tshark: the constructed session steps back in time", len(times) == len(recs) and times != sorted(times),
          times)
    res = run("sessions", "-q", "-f", "json", path)
    rows = json_lines(res.stdout)
    if not check("sessions: the stepping session is one session", res.returncode == 0 and len(rows) == 1,
                 (rows, stderr_lines(res))):
        return
    s = rows[0]
    start, end = decimal.Decimal(str(s["start"])), decimal.Decimal(str(s["end"]))
    q = decimal.Decimal("0.000001")
    check("sessions: start is the earliest packet time (tshark's)", start.quantize(q) == min(times).quantize(q),
          (start, min(times)))
    check("sessions: end is the latest packet time (tshark's)", end.quantize(q) == max(times).quantize(q),
          (end, max(times)))

    res = run("replay", "--no-model", "-q", path)
    flows = [e["flow"] for e in json_lines(res.stdout) if e["event_type"] == "flow"]

    def epoch(iso):
        t = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%f%z")
        return decimal.Decimal(int(t.timestamp())) + decimal.Decimal(t.microsecond) / 1000000
    check("replay: the flow event's start and end are the earliest and latest packet times",
          len(flows) == 1 and epoch(flows[0]["start"]) == min(times).quantize(q)
          and epoch(flows[0]["end"]) == max(times).quantize(q), flows)


def test_evicted_counter():
    # docs/sessions.md: flows_evicted also counts closed sessions pushed out for room, whose rows
    # say "closed". One worker: which flows are pushed out does not depend on the hash seed.
    path = os.path.join(DATA, "pcaps", "ndpi-1kxun.pcap")
    res = run("sessions", "-q", "--stats", "--max-flows", "16", "-w", "1", path)
    stats = json.loads(res.stderr.decode().strip().splitlines()[-1])
    evicted_rows = sum(1 for r in tsv_rows(res.stdout) if r[11] == b"evicted")
    check("--stats flows_evicted counts closed flows removed for room too",
          res.returncode == 0 and stats["flows_evicted"] > evicted_rows > 0, (stats["flows_evicted"], evicted_rows))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        test_json_names(tmp)
        test_dataset_index(tmp)
        test_streams(tmp)
        test_repeated(tmp)
        test_time_backwards(tmp)
        test_evicted_counter()
    finish()


if __name__ == "__main__":
    main()
