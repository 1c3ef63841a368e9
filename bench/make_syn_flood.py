#!/usr/bin/python3
"""make_syn_flood.py — a SYN flood capture with real sessions mixed in, for the sensor's flood
test (tests/integration/sensor_flood.py) and for trying max_flows / emergency settings by hand.

Writes a classic little-endian pcap (LINKTYPE_ETHERNET, µs) of N TCP SYNs, each from a distinct
source (10.a.b.c, port 1024 + i % 64000) to 192.0.2.1:80 (TEST-NET-1), 54-byte frames with valid
IPv4 and TCP checksums, one every --step-us µs of packet time. Into it go the whole sessions of
--mix captures (pcap or pcapng, Ethernet): the frames of each session kept together and in their
order, the sessions placed at evenly spread positions of the flood, timestamps rewritten to the
flood's clock (each mixed frame takes the next step). Frames of a mix capture that carry no
TCP/UDP session (ARP, LLC, ...) are left out.

Prints one JSON object: frames, syns, the mixed sessions (5-tuple as netlm prints it, frames)
and the byte size.

usage: make_syn_flood.py OUT.pcap [--syns N] [--step-us U] [--mix FILE]... [--start S]
"""
import argparse
import ipaddress
import json
import struct
import sys

ETH = bytes.fromhex("020000000002" "020000000001" "0800")  # dst, src, IPv4
DST_IP = bytes([192, 0, 2, 1])
DST_PORT = 80


def read_frames(path):
    """(linktype, bytes) of every frame of a pcap or pcapng file."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    if data[:4] == b"\x0a\x0d\x0d\x0a":  # pcapng
        off, order, links = 0, "<", []
        while off + 12 <= len(data):
            if data[off:off + 4] == b"\x0a\x0d\x0d\x0a":
                order = "<" if data[off + 8:off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
                links = []
            btype, blen = struct.unpack(order + "II", data[off:off + 8])
            if blen < 12:
                break
            body = data[off + 8:off + blen - 4]
            if btype == 1:  # interface description
                links.append(struct.unpack(order + "H", body[:2])[0])
            elif btype == 6:  # enhanced packet
                iface, _, _, caplen, _ = struct.unpack(order + "IIIII", body[:20])
                out.append((links[iface] if iface < len(links) else 1, body[20:20 + caplen]))
            elif btype == 3:  # simple packet
                wire = struct.unpack(order + "I", body[:4])[0]
                out.append((links[0] if links else 1, body[4:4 + wire]))
            off += blen
        return out
    if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise ValueError(f"{path}: neither pcap nor pcapng")
    link = struct.unpack(order + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        caplen = struct.unpack(order + "I", data[off + 8:off + 12])[0]
        out.append((link, data[off + 16:off + 16 + caplen]))
        off += 16 + caplen
    return out


def five_tuple(frame):
    """(proto, a_ip, a_port, b_ip, b_port) of an Ethernet (optionally 802.1Q) IPv4/IPv6 TCP/UDP
    frame as sent, or None."""
    off, etype = 12, int.from_bytes(frame[12:14], "big")
    while etype in (0x8100, 0x88A8) and len(frame) >= off + 6:
        off += 4
        etype = int.from_bytes(frame[off:off + 2], "big")
    ip = off + 2
    if etype == 0x0800 and len(frame) >= ip + 20:
        ihl = (frame[ip] & 15) * 4
        proto = frame[ip + 9]
        if int.from_bytes(frame[ip + 6:ip + 8], "big") & 0x1FFF:
            return None  # a later fragment
        src, dst, l4 = ipaddress.IPv4Address(frame[ip + 12:ip + 16]), ipaddress.IPv4Address(frame[ip + 16:ip + 20]), ip + ihl
    elif etype == 0x86DD and len(frame) >= ip + 40:
        proto = frame[ip + 6]
        src, dst, l4 = ipaddress.IPv6Address(frame[ip + 8:ip + 24]), ipaddress.IPv6Address(frame[ip + 24:ip + 40]), ip + 40
    else:
        return None
    if proto not in (6, 17) or len(frame) < l4 + 4:
        return None
    sp, dp = struct.unpack(">HH", frame[l4:l4 + 4])
    return ({6: "TCP", 17: "UDP"}[proto], str(src), sp, str(dst), dp)


def sessions_of(path):
    """Whole sessions of a capture in first-seen order: (5-tuple of the first frame, [frames]).
    Both directions of a 5-tuple are one session here (the flood keeps a session's frames
    together, so netlm's own session splitting sees them as in the original)."""
    order, by_key = [], {}
    for link, frame in read_frames(path):
        if link != 1:
            raise ValueError(f"{path}: only Ethernet captures can be mixed in (linktype {link})")
        t = five_tuple(frame)
        if t is None:
            continue
        key = (t[0],) + tuple(sorted([(t[1], t[2]), (t[3], t[4])]))
        if key not in by_key:
            by_key[key] = (t, [])
            order.append(key)
        by_key[key][1].append(frame)
    return [by_key[k] for k in order]


def csum_fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def words(b):
    return sum(struct.unpack(f">{len(b) // 2}H", b))


def syn_frame(i):
    src_ip = bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])
    sport = 1024 + i % 64000
    seq = (i * 2654435761) & 0xFFFFFFFF
    ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0x4000, 64, 6, 0, src_ip, DST_IP))
    struct.pack_into(">H", ip, 10, 0xFFFF - csum_fold(words(ip)))
    tcp = bytearray(struct.pack(">HHIIBBHHH", sport, DST_PORT, seq, 0, 5 << 4, 0x02, 64240, 0, 0))
    pseudo = src_ip + DST_IP + struct.pack(">BBH", 0, 6, 20)
    struct.pack_into(">H", tcp, 16, 0xFFFF - csum_fold(words(pseudo) + words(tcp)))
    return ETH + bytes(ip) + bytes(tcp)


def write_flood(out, syns, mix_paths, step_us=1, start_s=1_700_000_000):
    mixed = []
    for p in mix_paths:
        mixed.extend(sessions_of(p))
    # session j goes in before SYN number at[j]: spread from 1/(n+1) to n/(n+1) of the flood
    at = [(j + 1) * syns // (len(mixed) + 1) for j in range(len(mixed))]
    t_us = 0
    frames = 0
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

        def put(frame):
            nonlocal t_us, frames
            ts = start_s * 1_000_000 + t_us
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)))
            f.write(frame)
            t_us += step_us
            frames += 1

        j = 0
        info = []
        for i in range(syns):
            while j < len(mixed) and at[j] == i:
                t, fr = mixed[j]
                for frame in fr:
                    put(frame)
                info.append({"proto": t[0], "src_ip": t[1], "src_port": t[2], "dest_ip": t[3], "dest_port": t[4],
                             "frames": len(fr), "at_syn": i})
                j += 1
            put(syn_frame(i))
        while j < len(mixed):
            t, fr = mixed[j]
            for frame in fr:
                put(frame)
            info.append({"proto": t[0], "src_ip": t[1], "src_port": t[2], "dest_ip": t[3], "dest_port": t[4],
                         "frames": len(fr), "at_syn": syns})
            j += 1
    return {"file": out, "frames": frames, "syns": syns, "step_us": step_us, "mixed_sessions": info}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--syns", type=int, default=1_000_000)
    ap.add_argument("--step-us", type=int, default=1)
    ap.add_argument("--mix", action="append", default=[])
    ap.add_argument("--start", type=int, default=1_700_000_000, help="first timestamp, Unix seconds")
    a = ap.parse_args()
    info = write_flood(a.out, a.syns, a.mix, a.step_us, a.start)
    info["bytes"] = __import__("os").path.getsize(a.out)
    json.dump(info, sys.stdout)
    print()


if __name__ == "__main__":
    main()
