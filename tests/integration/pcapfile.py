"""pcapfile.py — a small pcap / pcapng reader for the tests: the frames' bytes, independent of
netlm's own reader (libpcap) and decoder."""
import struct

PCAP_MAGICS_LE = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")  # µs, ns
PCAP_MAGICS_BE = (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
PCAPNG_SHB, PCAPNG_IDB, PCAPNG_PB, PCAPNG_SPB, PCAPNG_EPB = 0x0A0D0D0A, 1, 2, 3, 6


def records(path):
    """Yields (linktype, frame, wirelen, raw) for each record of a pcap or pcapng file, in file
    order, reading as it goes: raw is the record as the file holds it (pcap: header and frame;
    pcapng: the block); frame is None for what is not a packet (the pcap file header, pcapng's
    other blocks), whose linktype is -1. A record cut by the end of the file ends the walk, as
    libpcap stops there."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) >= 4 and struct.unpack_from("<I", head)[0] == PCAPNG_SHB:
            yield from _pcapng_records(f, head)
            return
        magic = head[:4]
        if magic in PCAP_MAGICS_LE:
            endian = "<"
        elif magic in PCAP_MAGICS_BE:
            endian = ">"
        else:
            raise ValueError(f"{path}: neither pcap nor pcapng")
        if len(head) < 24:
            raise ValueError(f"{path}: a pcap file header cut short")
        linktype = struct.unpack_from(endian + "I", head, 20)[0] & 0x0FFFFFFF
        yield -1, None, 0, head
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            caplen, wirelen = struct.unpack_from(endian + "II", rec, 8)
            frame = f.read(caplen)
            if len(frame) < caplen:
                return
            yield linktype, frame, wirelen, rec + frame


def _pcapng_records(f, head):
    endian, links, pending = "<", [], head
    while True:
        block_head = pending + f.read(max(0, 12 - len(pending)))
        pending = b""
        if len(block_head) < 12:
            return
        if struct.unpack_from("<I", block_head)[0] == PCAPNG_SHB:  # each section says its byte order
            endian = "<" if struct.unpack_from("<I", block_head, 8)[0] == 0x1A2B3C4D else ">"
            links = []
        kind, length = struct.unpack_from(endian + "II", block_head)
        if length < 12:
            return
        block = block_head[:length] if len(block_head) >= length else block_head + f.read(length - len(block_head))
        pending = block_head[length:]
        if len(block) < length:
            return
        iface, frame, wirelen = 0, None, 0
        if kind == PCAPNG_IDB:
            links.append(struct.unpack_from(endian + "H", block, 8)[0])
        elif kind in (PCAPNG_EPB, PCAPNG_PB):
            iface = struct.unpack_from(endian + ("I" if kind == PCAPNG_EPB else "H"), block, 8)[0]
            caplen, wirelen = struct.unpack_from(endian + "II", block, 20)
            frame = block[28:28 + caplen]
        elif kind == PCAPNG_SPB:
            wirelen = struct.unpack_from(endian + "I", block, 8)[0]
            frame = block[12:12 + min(wirelen, length - 16)]
        if frame is None:
            yield -1, None, 0, block
        else:
            yield links[iface] if iface < len(links) else -1, frame, wirelen, block


def frames(path):
    """Yields (linktype, frame, wirelen) for each packet of the file."""
    for linktype, frame, wirelen, _ in records(path):
        if frame is not None:
            yield linktype, frame, wirelen
