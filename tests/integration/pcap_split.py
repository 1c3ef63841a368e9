#!/usr/bin/python3
"""pcap_split.py — splits a pcap file into N files the way a NIC's symmetric RSS spreads frames
over N receive queues: every frame of one pair of IP addresses (either direction, fragments
included) goes to the same file, chosen by a hash of the unordered pair; frames without IP (ARP,
LLDP, ...) go to file 0. Each file keeps its frames in their original order.

Used to feed DPDK's net_pcap device one rx_pcap file per queue (tests/integration/sensor_dpdk.py,
bench/sensor_dpdk_bench.py). Reads pcap (either byte order, µs or ns) and pcapng; each output is
in its input's format (pcapng: every block that is not a packet goes to every file).

usage: pcap_split.py IN N OUT_PREFIX     writes OUT_PREFIX0.pcap .. OUT_PREFIX{N-1}.pcap
"""
import os
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pcapfile  # noqa: E402

LINK_ETHERNET, LINK_RAW, LINK_LINUX_SLL, LINK_IPV4, LINK_IPV6 = 1, 101, 113, 228, 229
VLAN_TYPES = (0x8100, 0x88a8, 0x9100)


def ip_pair(linktype, frame):
    """The frame's unordered (source, destination) IP address pair, or None."""
    if linktype == LINK_ETHERNET:
        off, ethertype = 14, None
        if len(frame) >= 14:
            ethertype = struct.unpack_from(">H", frame, 12)[0]
        while ethertype in VLAN_TYPES and len(frame) >= off + 4:
            ethertype = struct.unpack_from(">H", frame, off + 2)[0]
            off += 4
    elif linktype == LINK_LINUX_SLL:
        off = 16
        ethertype = struct.unpack_from(">H", frame, 14)[0] if len(frame) >= 16 else None
    elif linktype in (LINK_RAW, LINK_IPV4, LINK_IPV6):
        off = 0
        version = frame[0] >> 4 if frame else 0
        ethertype = 0x0800 if version == 4 else 0x86DD if version == 6 else None
    else:
        return None
    if ethertype == 0x0800 and len(frame) >= off + 20:
        a, b = frame[off + 12:off + 16], frame[off + 16:off + 20]
    elif ethertype == 0x86DD and len(frame) >= off + 40:
        a, b = frame[off + 8:off + 24], frame[off + 24:off + 40]
    else:
        return None
    return (a, b) if a <= b else (b, a)


def queue_of_pair(a, b, n):
    """The queue of the frames between addresses a and b (packed bytes), either direction."""
    return zlib.crc32(min(a, b) + max(a, b)) % n


def queue_of(linktype, frame, n):
    pair = ip_pair(linktype, frame)
    return 0 if pair is None else queue_of_pair(*pair, n)


def paths(prefix, n):
    """The n files split() writes."""
    return [f"{prefix}{q}.pcap" for q in range(n)]


def split(path, n, prefix):
    """Writes the n files; returns their paths and the frame count of each."""
    paths_out = paths(prefix, n)
    counts = [0] * n
    outs = [open(p, "wb") for p in paths_out]
    try:
        for linktype, frame, _, raw in pcapfile.records(path):
            if frame is None:  # file header, interface descriptions, ...: every file needs them
                for out in outs:
                    out.write(raw)
            else:
                q = queue_of(linktype, frame, n)
                outs[q].write(raw)
                counts[q] += 1
    finally:
        for out in outs:
            out.close()
    return paths_out, counts


def main():
    if len(sys.argv) != 4 or not sys.argv[2].isdigit() or int(sys.argv[2]) < 1:
        sys.exit("usage: pcap_split.py IN.pcap N OUT_PREFIX")
    written, counts = split(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    for p, c in zip(written, counts):
        print(f"{p}: {c} frames")


if __name__ == "__main__":
    main()
