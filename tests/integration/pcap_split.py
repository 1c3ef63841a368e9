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
import struct
import sys
import zlib

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


def queue_of(linktype, frame, n):
    pair = ip_pair(linktype, frame)
    return 0 if pair is None else zlib.crc32(pair[0] + pair[1]) % n


def split_pcap(data, n, path):
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: neither pcap nor pcapng")
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    outs = [bytearray(data[:24]) for _ in range(n)]
    counts = [0] * n
    pos = 24
    while pos + 16 <= len(data):
        caplen = struct.unpack_from(endian + "I", data, pos + 8)[0]
        end = pos + 16 + caplen
        if end > len(data):
            break  # a cut last record: left out, as libpcap stops there
        q = queue_of(linktype, data[pos + 16:end], n)
        outs[q] += data[pos:end]
        counts[q] += 1
        pos = end
    return outs, counts


PCAPNG_SHB, PCAPNG_IDB, PCAPNG_PB, PCAPNG_SPB, PCAPNG_EPB = 0x0A0D0D0A, 1, 2, 3, 6


def split_pcapng(data, n, path):
    outs = [bytearray() for _ in range(n)]
    counts = [0] * n
    endian, links, pos = "<", [], 0
    while pos + 12 <= len(data):
        if struct.unpack_from("<I", data, pos)[0] == PCAPNG_SHB:  # each section says its byte order
            endian = "<" if struct.unpack_from("<I", data, pos + 8)[0] == 0x1A2B3C4D else ">"
            links = []
        kind, length = struct.unpack_from(endian + "II", data, pos)
        if length < 12 or pos + length > len(data):
            break
        block = data[pos:pos + length]
        frame = None
        if kind == PCAPNG_IDB:
            links.append(struct.unpack_from(endian + "H", block, 8)[0])
        elif kind == PCAPNG_EPB:
            iface, caplen = struct.unpack_from(endian + "I", block, 8)[0], struct.unpack_from(endian + "I", block, 20)[0]
            frame = (iface, block[28:28 + caplen])
        elif kind == PCAPNG_PB:
            iface, caplen = struct.unpack_from(endian + "H", block, 8)[0], struct.unpack_from(endian + "I", block, 20)[0]
            frame = (iface, block[28:28 + caplen])
        elif kind == PCAPNG_SPB:
            frame = (0, block[12:length - 4])
        if frame is None:
            for out in outs:
                out += block
        else:
            iface, payload = frame
            q = queue_of(links[iface] if iface < len(links) else -1, payload, n)
            outs[q] += block
            counts[q] += 1
        pos += length
    if not counts or pos == 0:
        raise ValueError(f"{path}: not a pcapng file")
    return outs, counts


def split(path, n, prefix):
    """Writes the n files; returns their paths and the frame count of each."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        raise ValueError(f"{path}: not a capture file (too short)")
    is_ng = struct.unpack_from("<I", data, 0)[0] == PCAPNG_SHB
    outs, counts = split_pcapng(data, n, path) if is_ng else split_pcap(data, n, path)
    paths = []
    for q in range(n):
        p = f"{prefix}{q}.pcap"
        with open(p, "wb") as f:
            f.write(outs[q])
        paths.append(p)
    return paths, counts


def main():
    if len(sys.argv) != 4 or not sys.argv[2].isdigit() or int(sys.argv[2]) < 1:
        sys.exit("usage: pcap_split.py IN.pcap N OUT_PREFIX")
    paths, counts = split(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    for p, c in zip(paths, counts):
        print(f"{p}: {c} frames")


if __name__ == "__main__":
    main()
