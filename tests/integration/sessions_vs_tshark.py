#!/usr/bin/python3
"""sessions_vs_tshark.py — netlm's TCP and UDP sessions against tshark's conversations.

For every capture in shared/data/pcaps and every USTC-TFC2016 class capture, runs tshark (see
tshark_sessions.py for how its conversations are taken) and `netlm sessions --format json`, in
the default outer-session mode and with --tunnels inner, and requires the same sessions: same
5-tuple oriented by the first packet, same first frame, packets and bytes each way.

Captures where netlm differs on purpose are listed in KNOWN with the reason; a listed capture
that stops differing fails the test too, so the list stays true.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tshark_sessions  # noqa: E402

NETLM = os.environ["NETLM"]
DATA = os.environ["NETLM_DATA_DIR"]

# (file, layer) -> why netlm's sessions differ from tshark's conversations.
KNOWN = {
    ("ndpi-4in6tunnel.pcap", "outer"): "IPv4-in-IPv6: netlm's outer session is the IPv6 pair (proto 4, no ports); "
                                       "tshark counts the inner TCP",
    ("ndpi-6in4tunnel.pcap", "outer"): "6in4: netlm's outer session is the IPv4 pair (proto 41, no ports); "
                                       "tshark counts the inner TCP and UDP",
    ("ndpi-gre.pcapng", "outer"): "GRE: netlm's outer session is the IP pair (proto 47, no ports); "
                                  "tshark counts the inner UDP",
    ("ndpi-teredo.pcap", "inner"): "Teredo bubbles (IPv6 with no next header): netlm's inner session is the "
                                   "IPv6 pair (proto 59); tshark leaves them in the outer UDP conversation",
    ("tcpdump-of13_ericsson.pcapng", "inner"): "OpenFlow packet-in/out messages carry whole frames; tshark "
                                               "dissects their TCP/UDP as conversations, netlm does not take "
                                               "OpenFlow for a tunnel",
}


def netlm_sessions(path, layer):
    cmd = [NETLM, "sessions", "--format", "json", "--quiet", "--no-timeouts", path]
    if layer == "inner":
        cmd += ["--tunnels", "inner"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    out = []
    for line in res.stdout.splitlines():
        s = json.loads(line)
        if s["proto"] in ("tcp", "udp"):
            out.append(s)
    return out


FIELDS = ("pkts_toserver", "pkts_toclient", "bytes_toserver", "bytes_toclient")


def key(s):
    return (s["proto"], s["src_ip"], s["src_port"], s["dest_ip"], s["dest_port"], s["first_frame"])


def compare(path, layer):
    ref = {key(c): c for c in tshark_sessions.conversations(path, layer)}
    got = {key(s): s for s in netlm_sessions(path, layer)}
    problems = []
    for k in sorted(set(ref) | set(got), key=lambda k: k[5]):
        if k not in got:
            problems.append(f"missing in netlm: {k} {[ref[k][f] for f in FIELDS]}")
        elif k not in ref:
            problems.append(f"not in tshark: {k} {[got[k][f] for f in FIELDS]}")
        else:
            a = [ref[k][f] for f in FIELDS]
            b = [got[k][f] for f in FIELDS]
            if a != b:
                problems.append(f"counts differ {k}: tshark {a} netlm {b}")
    return len(ref), problems


def main():
    files = sorted(os.path.join(DATA, "pcaps", f) for f in os.listdir(os.path.join(DATA, "pcaps"))
                   if f.endswith((".pcap", ".pcapng")))
    ustc = os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions")
    files += sorted(os.path.join(ustc, c, c + ".pcap") for c in os.listdir(ustc))
    passed = failed = 0
    seen_known = set()
    for path in files:
        name = os.path.relpath(path, DATA)
        for layer in ("outer", "inner"):
            try:
                n, problems = compare(path, layer)
            except Exception as e:  # a crash or non-zero exit of netlm is a failure like any other
                n, problems = 0, [str(e)]
            known = KNOWN.get((os.path.basename(path), layer))
            if known:
                seen_known.add((os.path.basename(path), layer))
            if problems and not known:
                failed += 1
                print(f"FAIL {name} [{layer}]: {len(problems)} difference(s) of {n} tshark conversations")
                for p in problems[:8]:
                    print("    " + p)
            elif not problems and known:
                failed += 1
                print(f"FAIL {name} [{layer}]: listed as differing ({known}) but now matches: update KNOWN")
            else:
                passed += 1
                note = f" (known: {known}; {len(problems)} differences)" if known else ""
                print(f"ok   {name} [{layer}]: {n} conversations{note}")
    for k in KNOWN:
        if k not in seen_known:
            failed += 1
            print(f"FAIL KNOWN lists {k}, which is not a tested capture")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
