#!/usr/bin/python3
"""seed_frames.py CAPTURE_DIR OUT_DIR — writes frames of the shared real captures as fuzz seeds:
each seed is a 2-byte little-endian link type followed by the frame."""
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import pcapfile  # noqa: E402

src, out = sys.argv[1], sys.argv[2]
n = 0
for name in sorted(os.listdir(src)):
    if not name.endswith(".pcap"):
        continue
    for i, (linktype, data, _) in enumerate(pcapfile.frames(os.path.join(src, name))):
        if i >= 20:
            break
        with open(os.path.join(out, f"{name}-{i}"), "wb") as f:
            f.write(struct.pack("<H", linktype) + data)
        n += 1
