#!/usr/bin/python3
"""tshark_sessions.py — the reference side of the session tests.

Computes, from tshark's own dissection, the TCP and UDP conversations of a capture exactly as
`tshark -q -z conv,tcp` / `-z conv,udp` group them (tcp.stream / udp.stream), but with exact
byte counts (the conv tables round to kB). IP reassembly is turned off, so that a fragmented
datagram belongs to its session through its first fragment, which carries the ports; its later
fragments join that session by netlm's rule (docs/sessions.md): same addresses and
identification (IPv4: and protocol), coming after the first fragment and at most 30 s of capture
time after it. tshark's fields say which datagram each fragment is part of. `layer` picks which transport of a frame counts: the outermost one (netlm's
default), or the innermost one before any ICMP (what `--tunnels inner` gives); headers quoted
inside ICMP errors never count, as in tshark's conversation tables.
"""
import subprocess
import sys
from collections import OrderedDict

FIELDS = ["frame.number", "frame.len", "frame.time_epoch", "frame.protocols", "ip.src", "ip.dst",
          "ipv6.src", "ipv6.dst", "tcp.srcport", "tcp.dstport", "tcp.stream", "udp.srcport",
          "udp.dstport", "udp.stream", "ip.id", "ip.proto", "ip.flags.mf", "ip.frag_offset",
          "ipv6.fraghdr.ident", "ipv6.fraghdr.offset", "ipv6.fraghdr.more", "vlan.id"]
FRAG_TIMEOUT = 30.0
TRANSPORTS = {"tcp", "udp", "icmp", "icmpv6", "sctp"}


def tshark_frames(path):
    cmd = ["tshark", "-n", "-r", path, "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE",
           "-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=;"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) != len(FIELDS):
            continue
        yield {k: (v.split(";") if v else []) for k, v in zip(FIELDS, parts)}


def pick_transport(protocols, layer):
    """Returns (transport, its index among that protocol's occurrences, network type, its
    occurrence index) for the chosen layer, or None."""
    counts = {}
    last_net = None
    found = []
    for p in protocols:
        if p in ("ip", "ipv6"):
            last_net = (p, counts.get(p, 0))
            counts[p] = counts.get(p, 0) + 1
            continue
        if p in TRANSPORTS:
            idx = counts.get(p, 0)
            counts[p] = idx + 1
            if last_net is None:
                return None
            found.append((p, idx, last_net[0], last_net[1]))
            if p in ("icmp", "icmpv6"):
                break  # what follows is a quoted header, not a session
            if layer == "outer":
                break
    if not found:
        return None
    return found[0] if layer == "outer" else found[-1]


def ip_layers(fr, protocols):
    """Each IP layer of a frame in order: (net, occurrence, fragment) where fragment is None or
    (identity, first) — first is True for the fragment at offset 0."""
    layers, counts, fraghdrs = [], {"ip": 0, "ipv6": 0}, 0
    for i, p in enumerate(protocols):
        if p not in ("ip", "ipv6"):
            continue
        n = counts[p]
        counts[p] += 1
        frag = None
        try:
            if p == "ip":
                offset, more = int(fr["ip.frag_offset"][n]), fr["ip.flags.mf"][n] in ("1", "True")
                if offset or more:
                    frag = (("ip", fr["ip.src"][n], fr["ip.dst"][n], int(fr["ip.proto"][n]),
                             int(fr["ip.id"][n], 16)), offset == 0)
            elif i + 1 < len(protocols) and protocols[i + 1] == "ipv6.fraghdr":
                offset = int(fr["ipv6.fraghdr.offset"][fraghdrs])
                more = fr["ipv6.fraghdr.more"][fraghdrs] in ("1", "True")
                if offset or more:
                    frag = (("ipv6", fr["ipv6.src"][n], fr["ipv6.dst"][n],
                             int(fr["ipv6.fraghdr.ident"][fraghdrs], 16)), offset == 0)
        except (IndexError, ValueError):
            frag = None
        if p == "ipv6" and i + 1 < len(protocols) and protocols[i + 1] == "ipv6.fraghdr":
            fraghdrs += 1
        layers.append((p, n, frag))
    return layers


def conversations(path, layer="outer"):
    convs = OrderedDict()
    datagrams = {}  # identity of a fragmented datagram -> (conversation, to server, until)
    clock = None
    for fr in tshark_frames(path):
        protocols = fr["frame.protocols"][0].split(":") if fr["frame.protocols"] else []
        t_frame = float(fr["frame.time_epoch"][0])
        clock = t_frame if clock is None else max(clock, t_frame)
        vlan = fr["vlan.id"][-1] if fr["vlan.id"] else None
        ips = ip_layers(fr, protocols)
        t = pick_transport(protocols, layer)
        if t is None or t[0] not in ("tcp", "udp"):
            frag = ips[-1][2] if ips else None
            if t is None and frag and not frag[1]:
                d = datagrams.get((vlan,) + frag[0])
                if d and clock <= d[2]:
                    c, toserver, _ = d
                    side = "toserver" if toserver else "toclient"
                    c["pkts_" + side] += 1
                    c["bytes_" + side] += int(fr["frame.len"][0])
            continue
        proto, tidx, net, nidx = t
        try:
            stream = fr[proto + ".stream"][tidx]
            sport = int(fr[proto + ".srcport"][tidx])
            dport = int(fr[proto + ".dstport"][tidx])
            src = fr[net + ".src"][nidx]
            dst = fr[net + ".dst"][nidx]
        except (IndexError, ValueError):
            continue  # a transport tshark names but could not dissect (truncated header)
        number = int(fr["frame.number"][0])
        length = int(fr["frame.len"][0])
        key = (proto, stream)
        c = convs.get(key)
        if c is None:
            c = convs[key] = {"proto": proto, "src_ip": src, "src_port": sport, "dest_ip": dst,
                              "dest_port": dport, "first_frame": number, "pkts_toserver": 0,
                              "pkts_toclient": 0, "bytes_toserver": 0, "bytes_toclient": 0}
        toserver = (src, sport) == (c["src_ip"], c["src_port"]) and (dst, dport) == (c["dest_ip"], c["dest_port"])
        side = "toserver" if toserver else "toclient"
        c["pkts_" + side] += 1
        c["bytes_" + side] += length
        frag = next((f for p, n, f in ips if (p, n) == (net, nidx)), None)
        if frag and frag[1]:
            datagrams[(vlan,) + frag[0]] = (c, toserver, clock + FRAG_TIMEOUT)
    return list(convs.values())


if __name__ == "__main__":
    import json
    layer = sys.argv[2] if len(sys.argv) > 2 else "outer"
    for c in conversations(sys.argv[1], layer):
        print(json.dumps(c))
