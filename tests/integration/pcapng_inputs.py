#!/usr/bin/python3
"""pcapng_inputs.py — pcapng files whose interfaces differ in link type, snap length or time
resolution (Wireshark's multi-interface captures, mergecap's merges), which libpcap refuses and
netlm's own reader takes; and the idle-timeout flags, whose 0 means none in every state.

References, none of them netlm's:
- merges made with mergecap of shared captures: every frame comes out (the inputs' counts by
  capinfos), and the sessions are tshark's conversations (tshark_sessions, the rule of
  sessions_vs_tshark.py);
- a file written here block by block (two sections of both byte orders, four time resolutions,
  a time offset, obsolete Packet Blocks, Simple Packet Blocks, blocks that are not packets):
  tshark's frames and conversations of it;
- replay's capture filter, compiled for each interface's link type: the frames it keeps are those
  libpcap's own filter keeps of each input pcap;
- progress through a pipe: the bytes it ends at are the file's size;
- the timeout flags on a capture made here with known gaps: the sessions the help's words give,
  and with no timeout tshark's conversations.
"""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check, finish, netlm  # noqa: E402
import pcapfile  # noqa: E402
import sessions_vs_tshark  # noqa: E402

DATA = os.environ["NETLM_DATA_DIR"]
PCAPS = os.path.join(DATA, "pcaps")


def pcap(name):
    return os.path.join(PCAPS, name)


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def capinfos_count(path):
    return int(run("capinfos", "-c", "-M", "-T", "-r", path).split()[-1])


def netlm_frames(path, *extra):
    """netlm sessions' frame count (--stats) and its stderr without the stats line."""
    res = netlm("sessions", "-q", "--stats", "--no-timeouts", *extra, path)
    lines = res.stderr.strip().splitlines()
    return json.loads(lines[-1])["frames"], "\n".join(lines[:-1])


def same_sessions_as_tshark(name, path):
    n, problems = sessions_vs_tshark.compare(path, "outer")
    check(f"{name}: netlm's sessions are tshark's {n} conversations", not problems and n > 0,
          "; ".join(problems[:5]))


def merges(tmp):
    """mergecap's files with interfaces of different snap lengths and link types."""
    ssh = os.path.join(tmp, "ssh.pcapng")
    run("editcap", "-F", "pcapng", pcap("tcpdump-ssh.pcap"), ssh)
    dns_ns = os.path.join(tmp, "dns-ns.pcap")
    run("editcap", "-F", "nsecpcap", pcap("tcpdump-dns_tcp.pcap"), dns_ns)
    dns = os.path.join(tmp, "dns.pcapng")
    run("editcap", "-F", "pcapng", dns_ns, dns)
    cases = {
        # snap lengths 262144 and 65535, resolutions ns and µs
        "mix.pcapng": ([dns, ssh], [pcap("tcpdump-dns_tcp.pcap"), pcap("tcpdump-ssh.pcap")]),
        # Ethernet and raw IP
        "multi.pcapng": ([pcap("ndpi-teams.pcap"), pcap("tcpdump-LINKTYPE_RAW_ipv4.pcap")], None),
        # Ethernet, Linux SLL, BSD loopback, raw IP, IP over InfiniBand (a big-endian pcap)
        "links5.pcapng": ([pcap(f) for f in ("ndpi-teams.pcap", "tcpdump-resp_1_benchmark.pcap",
                                             "tcpdump-quic_handshake.pcap", "ndpi-ocs.pcap", "tcpdump-ipoib.pcap")],
                          None),
    }
    for name, (inputs, originals) in cases.items():
        path = os.path.join(tmp, name)
        run("mergecap", "-w", path, *inputs)
        want = sum(capinfos_count(p) for p in (originals or inputs))
        frames, stderr = netlm_frames(path)
        check(f"{name}: all {want} frames of its inputs, no warning", frames == want and not stderr,
              f"{frames} frames; {stderr}")
        same_sessions_as_tshark(name, path)
    # corpus reads captures on its own: the documents of the merge are those of its inputs
    def documents(*paths):
        out = os.path.join(tmp, "corpus.txt")
        res = netlm("corpus", "-q", "-o", out, *paths)
        return sorted(open(out).read().split("\n\n")), res.stderr.strip()

    merged, stderr = documents(os.path.join(tmp, "multi.pcapng"))
    separate, _ = documents(*cases["multi.pcapng"][0])
    check(f"corpus of multi.pcapng: the {len(separate)} documents of its inputs, no warning",
          merged == separate and len(separate) > 1000 and not stderr, f"{len(merged)} documents; {stderr}")


# ---- a pcapng file written block by block ----

def block(e, kind, body):
    body += b"\0" * (-len(body) % 4)
    return struct.pack(e + "II", kind, len(body) + 12) + body + struct.pack(e + "I", len(body) + 12)


def option(e, code, value):
    return struct.pack(e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def section(e):
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + option(e, 4, b"pcapng_inputs.py")
                 + option(e, 0, b""))


def interface(e, linktype, snaplen, tsresol=None, tsoffset=None):
    opts = option(e, 2, b"if")
    if tsresol is not None:
        opts += option(e, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += option(e, 14, struct.pack(e + "q", tsoffset))
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts + option(e, 0, b""))


def packet(e, iface, t, frame, wirelen, obsolete=False):
    head = struct.pack(e + "HH", iface, 0) if obsolete else struct.pack(e + "I", iface)
    return block(e, 2 if obsolete else 6,
                 head + struct.pack(e + "IIII", t >> 32, t & 0xFFFFFFFF, len(frame), wirelen) + frame
                 + b"\0" * (-len(frame) % 4) + option(e, 1, b"a comment") + option(e, 0, b""))


def simple(e, frame, snaplen=0):
    """What a Simple Packet Block holds: the original length, and the frame up to the interface's
    snap length (the block's length says no more)."""
    return block(e, 3, struct.pack(e + "I", len(frame)) + frame[:snaplen or len(frame)])


def timed_frames(name):
    """(seconds, µs, frame, wirelen) of a little-endian µs pcap."""
    out = []
    for linktype, frame, wirelen, raw in pcapfile.records(pcap(name)):
        if frame is not None:
            sec, usec = struct.unpack_from("<II", raw, 0)
            out.append((sec, usec, frame, wirelen))
    return out


def written(tmp):
    resp = timed_frames("tcpdump-resp_1_benchmark.pcap")  # Linux SLL
    ssh = timed_frames("tcpdump-ssh.pcap")                 # Ethernet
    quic = timed_frames("tcpdump-quic_handshake.pcap")     # BSD loopback
    le, be = "<", ">"
    out = section(le) + interface(le, 113, 262144) + interface(le, 1, 65535, tsresol=9)
    out += block(le, 4, option(le, 1, b"\x7f\x00\x00\x01localhost\x00") + option(le, 0, b""))  # name resolution
    for i, (s, us, f, w) in enumerate(resp):
        out += packet(le, 0, s * 10**6 + us, f, w)
        if i < 27:  # the first half of the SSH session on its own interface, obsolete blocks, ns
            s2, us2, f2, w2 = ssh[i]
            out += packet(le, 1, s2 * 10**9 + us2 * 1000, f2, w2, obsolete=True)
    # no custom block (0x0BAD, 0x40000BAD): tshark counts one as a frame, netlm skips it
    # the second section: big-endian, its own interfaces, 2^-20 s and ms with an offset
    out += section(be) + interface(be, 1, 0, tsresol=0x94) + interface(be, 0, 65535, tsresol=3, tsoffset=-3600)
    for s, us, f, w in ssh[27:]:
        out += packet(be, 0, (s << 20) | (us << 20) // 10**6, f, w)
    for s, us, f, w in quic:
        out += packet(be, 1, (s + 3600) * 1000 + us // 1000, f, w)
    out += block(be, 5, struct.pack(be + "IIII", 0, 0, 0, 0))  # interface statistics
    path = os.path.join(tmp, "written.pcapng")
    with open(path, "wb") as fh:
        fh.write(out)
    want = len(resp) + len(ssh) + len(quic)
    frames, stderr = netlm_frames(path)
    check(f"written.pcapng: its {want} frames, as tshark counts them", frames == want == capinfos_count(path)
          and not stderr, f"{frames} frames; {stderr}")
    same_sessions_as_tshark("written.pcapng", path)

    # Simple Packet Blocks: no time, no captured length; tshark gives them no time either, so
    # they are not in a file tshark_sessions reads
    esp = timed_frames("tcpdump-espudp1.pcap")
    out = section(le) + interface(le, 1, 262144) + b"".join(simple(le, f) for _, _, f, _ in esp[:3])
    out += packet(le, 0, ssh[0][0] * 10**6 + ssh[0][1], ssh[0][2], ssh[0][3])
    out += section(be) + interface(be, 1, 100) + simple(be, esp[3][2], 100)
    path = os.path.join(tmp, "simple.pcapng")
    with open(path, "wb") as fh:
        fh.write(out)
    res = netlm("sessions", "-q", "--format", "json", "--no-timeouts", path)
    sessions = [json.loads(line) for line in res.stdout.splitlines()]
    udp = [s for s in sessions if s["proto"] == "udp"]
    tshark_udp = int(run("tshark", "-r", path, "-Y", "udp").count("\n"))
    cut = min(esp[3][3], 100)  # the second section's snap length
    check("simple.pcapng: one ESP-in-UDP session of its 4 Simple Packet Blocks (tshark: 4 UDP frames), "
          "the last cut to its interface's snap length",
          len(udp) == 1 and udp[0]["pkts_toserver"] + udp[0]["pkts_toclient"] == 4 == tshark_udp
          and capinfos_count(path) == 5, f"{udp}, tshark {tshark_udp}")
    frames = [f for _, f, _ in pcapfile.frames(path)]
    check("simple.pcapng: the cut frame is 100 bytes", len(frames[-1]) == cut == 100, str(len(frames[-1])))


# ---- replay's capture filter ----

def flow_packets(stdout):
    events = [json.loads(line) for line in stdout.splitlines()]
    stats = [e for e in events if e["event_type"] == "stats"]
    flows = [e for e in events if e["event_type"] == "flow"]
    return stats[-1]["stats"]["capture"]["packets"] if stats else -1, {e["proto"] for e in flows}


def replay_filter(tmp):
    inputs = [pcap(f) for f in ("ndpi-teams.pcap", "tcpdump-resp_1_benchmark.pcap", "tcpdump-quic_handshake.pcap",
                                "ndpi-ocs.pcap")]
    merged = os.path.join(tmp, "links4.pcapng")
    run("mergecap", "-w", merged, *inputs)
    for bpf, proto in (("tcp", "TCP"), ("udp", "UDP")):
        conf = os.path.join(tmp, f"{bpf}.conf")
        with open(conf, "w") as fh:
            fh.write(f'capture = {{ bpf = "{bpf}"; }};\n')
        # each input on its own, a pcap: libpcap compiles the filter for its link type (three of
        # them have such frames; for "udp" one is the BSD loopback's IPv6 of a macOS capture)
        want = [flow_packets(netlm("replay", "-c", conf, "--no-model", "-q", p).stdout)[0] for p in inputs]
        got, protos = flow_packets(netlm("replay", "-c", conf, "--no-model", "-q", merged).stdout)
        check(f"replay of links4.pcapng with capture.bpf \"{bpf}\": the {sum(want)} frames the filter keeps of "
              f"each input pcap ({want}), {proto} flows only", got == sum(want) and len([w for w in want if w]) == 3
              and protos == {proto},
              f"{got} frames, {protos}")
    # IP over InfiniBand: libpcap has no filter for it
    links5 = os.path.join(tmp, "links5.pcapng")
    res = netlm("replay", "-c", os.path.join(tmp, "tcp.conf"), "--no-model", "-q", links5, ok=False)
    err = res.stderr.strip().splitlines()
    check("replay with capture.bpf on a file with an IPoIB interface: one line naming the file and link type 242",
          res.returncode != 0 and len(err) == 1 and "links5.pcapng" in err[0] and "link type 242" in err[0],
          res.stderr.strip())


# ---- progress ----

def progress(tmp):
    """Through a named pipe, fed slowly so that the run takes over a second and prints its final
    progress line: it ends at the file's size (frame bytes alone fall short of a pcapng file's)."""
    parts = [pcap(f) for f in ("ndpi-gnutella.pcap", "ndpi-synscan.pcap", "ndpi-teams.pcap", "ndpi-netflix.pcap",
                               "ndpi-1kxun.pcap", "ndpi-KakaoTalk_chat.pcap", "ndpi-pinterest.pcap")]
    path = os.path.join(tmp, "progress.pcapng")
    run("mergecap", "-a", "-F", "pcapng", "-w", path, *parts)
    data = open(path, "rb").read()
    frames = capinfos_count(path)
    fifo = os.path.join(tmp, "progress.fifo")
    os.mkfifo(fifo)

    def feed():
        try:
            with open(fifo, "wb") as fh:
                fh.write(data[:len(data) // 2])
                fh.flush()
                time.sleep(1.5)
                fh.write(data[len(data) // 2:])
        except BrokenPipeError:
            pass  # netlm stopped reading: the check below says why

    writer = threading.Thread(target=feed)
    writer.start()
    res = subprocess.run([os.environ["NETLM"], "sessions", fifo], capture_output=True, text=True, timeout=300)
    writer.join()
    last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    m = re.match(r"sessions: ([0-9.]+) MB, ([0-9]+) frames", last)
    frame_mb = (sum(len(f) for _, f, _ in pcapfile.frames(path)) + 16 * frames) / 1e6
    check(f"progress through a pipe ends at the file's {len(data) / 1e6:.1f} MB, {frames} frames "
          f"(frames and 16-byte records: {frame_mb:.1f} MB)",
          m is not None and m.group(1) == f"{len(data) / 1e6:.1f}" and int(m.group(2)) == frames
          and f"{frame_mb:.1f}" != m.group(1), last)


# ---- the timeout flags ----

def ethernet(src_port, dst_port, proto, payload=b"", tcp_flags=0, seq=0, reverse=False):
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    if reverse:
        a, b = b, a
    if proto == 17:
        l4 = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", src_port, dst_port, seq, 0, 5 << 4, tcp_flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, a, b)
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + l4


def timeouts(tmp):
    """Four flows with known idle gaps: A one-way UDP every 40 s (5 packets), B one-way UDP every
    25 s (4), C a SYN retransmitted every 70 s (3), D a TCP connection idle for 100 s in the
    middle (6 packets). Defaults: UDP new 30 s, established 300; TCP new 60, established 600."""
    t0 = 1700000000
    pkts = []
    for i in range(5):
        pkts.append((t0 + 40 * i, ethernet(5000, 6000, 17, b"A")))
    for i in range(4):
        pkts.append((t0 + 1 + 25 * i, ethernet(5001, 6001, 17, b"B")))
    for i in range(3):
        pkts.append((t0 + 2 + 70 * i, ethernet(5002, 6002, 6, tcp_flags=0x02, seq=1000)))
    d = [(3, dict(tcp_flags=0x02, seq=1)), (3.1, dict(tcp_flags=0x12, seq=9, reverse=True)),
         (3.2, dict(tcp_flags=0x10, seq=2)), (4, dict(tcp_flags=0x18, seq=2, payload=b"x")),
         (104, dict(tcp_flags=0x18, seq=3, payload=b"y")), (105, dict(tcp_flags=0x10, seq=10, reverse=True))]
    for dt, kw in d:
        rev = kw.pop("reverse", False)
        sp, dp = (6003, 5003) if rev else (5003, 6003)
        pkts.append((t0 + dt, ethernet(sp, dp, 6, reverse=rev, **kw)))
    pkts.sort(key=lambda p: p[0])
    e = "<"
    out = section(e) + interface(e, 1, 65535) + b"".join(
        packet(e, 0, int(round(t * 10**6)), f, len(f)) for t, f in pkts)
    path = os.path.join(tmp, "gaps.pcapng")
    with open(path, "wb") as fh:
        fh.write(out)

    def counts(*flags):
        res = netlm("sessions", "-q", "--format", "json", *flags, path)
        got = {}
        for line in res.stdout.splitlines():
            s = json.loads(line)
            flow = "ABCD"[min(s["src_port"], s["dest_port"]) - 5000]
            got.setdefault(flow, []).append(s["pkts_toserver"] + s["pkts_toclient"])
        return {k: len(v) for k, v in got.items()}, {k: sum(v) for k, v in got.items()}

    cases = [
        ((), {"A": 5, "B": 1, "C": 3, "D": 1}, "defaults: one-way UDP ends after 30 s, a lone SYN after 60"),
        (("--udp-timeout", "0"), {"A": 1, "B": 1, "C": 3, "D": 1}, "--udp-timeout 0: no UDP session ends idle"),
        (("--udp-timeout", "20"), {"A": 5, "B": 4, "C": 3, "D": 1}, "--udp-timeout 20: one-way UDP too"),
        (("--udp-timeout", "100"), {"A": 5, "B": 1, "C": 3, "D": 1},
         "--udp-timeout 100: one not yet answered still ends after 30 s"),
        (("--tcp-timeout", "0"), {"A": 5, "B": 1, "C": 1, "D": 1}, "--tcp-timeout 0: no TCP session ends idle"),
        (("--tcp-timeout", "50"), {"A": 5, "B": 1, "C": 3, "D": 2}, "--tcp-timeout 50: established ones too"),
        (("--udp-timeout", "0", "--tcp-timeout", "0"), {"A": 1, "B": 1, "C": 1, "D": 1}, "both 0"),
        (("--no-timeouts",), {"A": 1, "B": 1, "C": 1, "D": 1}, "--no-timeouts"),
    ]
    for flags, want, what in cases:
        got, packets = counts(*flags)
        check(f"gaps.pcapng, {what}: sessions per flow {want}",
              got == want and packets == {"A": 5, "B": 4, "C": 3, "D": 6}, f"{got}, packets {packets}")
    # with no timeout at all, tshark's conversations
    n, problems = sessions_vs_tshark.compare(path, "outer")
    check(f"gaps.pcapng without timeouts: tshark's {n} conversations", n == 4 and not problems, "; ".join(problems))
    res = subprocess.run([os.environ["NETLM"], "sessions", "-q", "--format", "json", "--udp-timeout", "0",
                          "--tcp-timeout", "0", path], capture_output=True, text=True)
    ref = {sessions_vs_tshark.key(c) for c in sessions_vs_tshark.tshark_sessions.conversations(path)}
    got = {sessions_vs_tshark.key(json.loads(line)) for line in res.stdout.splitlines()}
    check("gaps.pcapng with --udp-timeout 0 --tcp-timeout 0: tshark's conversations too", got == ref,
          f"{got} vs {ref}")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        merges(tmp)
        written(tmp)
        replay_filter(tmp)
        progress(tmp)
        timeouts(tmp)
    finish()


if __name__ == "__main__":
    main()
