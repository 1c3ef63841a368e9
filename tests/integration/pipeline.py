#!/usr/bin/python3
"""pipeline.py — corpus, dataset and preprocess end to end on real captures, each checked
against an expectation computed here independently: tshark's layer offsets plus the seed's
algorithms restated in Python, tshark's field values, and the files' own counts."""
import collections
import json
import os
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pcapfile  # noqa: E402

from common import check, netlm, summary  # noqa: E402

DATA = os.environ["NETLM_DATA_DIR"]
PCAPS = os.path.join(DATA, "pcaps")
USTC = os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions")


def transport_offsets(path):
    """frame number -> offset of the first TCP/UDP header, from tshark's PDML."""
    xml = subprocess.run(["tshark", "-n", "-r", path, "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-T", "pdml"],
                         check=True, capture_output=True, text=True).stdout
    offsets = {}
    for i, packet in enumerate(ET.fromstring(xml).iter("packet"), start=1):
        for proto in packet.iter("proto"):
            name = proto.get("name")
            if name in ("icmp", "icmpv6"):
                break
            if name in ("tcp", "udp"):
                offsets[i] = int(proto.get("pos"))
                break
    return offsets


def overlapping(b, cap=256):
    return [b[i:i + 2].hex() for i in range(len(b) - 1)][:cap]


def test_corpus(tmp):
    for name in ("tcpdump-ssh.pcap", "ndpi-dns_fragmented.pcap", "ndpi-ocs.pcap", "tcpdump-vxlan.pcap"):
        path = os.path.join(PCAPS, name)
        offs = transport_offsets(path)
        expected = []
        for n, (_, data, _) in enumerate(pcapfile.frames(path), start=1):
            if n not in offs:
                continue
            rest = data[offs[n] + 4:]
            if len(rest) < 5:
                continue
            k = (len(rest) + len(rest) % 4) // 2
            expected.append(" ".join(overlapping(rest[:k])) + " \n" + " ".join(overlapping(rest[k:])) + " \n\n")
        out = os.path.join(tmp, "corpus.txt")
        netlm("corpus", "--quiet", "--pcap_path", path, "-o", out)
        with open(out) as f:
            got = f.read()
        docs = got.split("\n\n")[:-1]
        docs = [d + "\n\n" for d in docs]
        check(f"corpus {name}: {len(expected)} documents as the seed computes them from tshark's offsets",
              docs == expected, f"got {len(docs)} documents, expected {len(expected)}; first difference at "
              f"{next((i for i, (a, b) in enumerate(zip(docs, expected)) if a != b), min(len(docs), len(expected)))}")


def read_tsv(path):
    with open(path) as f:
        lines = f.read().split("\n")
    assert lines[-1] == ""
    return lines[0], [ln.split("\t") for ln in lines[1:-1]]


def test_understanding(tmp):
    out1, out2 = os.path.join(tmp, "ds1"), os.path.join(tmp, "ds2")
    netlm("dataset", "understanding", "--quiet", "--pcap_path", USTC, "--dataset_dir", out1, "--class_num", "20",
          "--random_seed", "01")
    netlm("dataset", "understanding", "--quiet", "--pcap_path", USTC, "--dataset_dir", out2, "--class_num", "20",
          "--random_seed", "1", "--workers", "2")
    names = ["train_dataset.tsv", "valid_dataset.tsv", "test_dataset.tsv", "nolabel_test_dataset.tsv",
             "classes.txt", "dataset_index.tsv", "dataset.json"]
    same = all(open(os.path.join(out1, n), "rb").read() == open(os.path.join(out2, n), "rb").read() for n in names)
    check("dataset understanding: 2 workers give byte-identical files", same)
    with open(os.path.join(out1, "classes.txt")) as f:
        classes = f.read().split()
    check("dataset understanding: classes.txt = sorted class folders", classes == sorted(os.listdir(USTC)))
    header, rows = read_tsv(os.path.join(out1, "train_dataset.tsv"))
    check("dataset understanding: header label\\ttext_a", header == "label\ttext_a")
    settings = json.load(open(os.path.join(out1, "dataset.json")))
    check("dataset understanding: dataset.json records the task and the default tokenization",
          settings == {"task": "understanding", "tokenizer": {"header_mode": "full", "stride": 2, "tokens_per_packet": 64,
                                                               "packets": 32, "sep_between_packets": False},
                       "seq_length": 0, "random_seed": 1, "classes": 20}, settings)
    # split by session, stratified: per class 10 % / 10 % / 80 % of sessions, nothing shared
    idx_header, index = read_tsv(os.path.join(out1, "dataset_index.tsv"))
    per_class = collections.defaultdict(collections.Counter)
    where = {}
    shared = 0
    for r in index:
        split, label, cls, file, first = r[0], r[1], r[2], r[3], r[4]
        per_class[cls][split] += 1
        k = (file, first)
        if k in where and where[k] != split:
            shared += 1
        where[k] = split
    check("dataset understanding: no session in two splits", shared == 0, f"{shared} shared")
    bad = []
    for cls, c in per_class.items():
        n = sum(c.values())
        want = (n + 5) // 10
        if c["test"] != want or c["valid"] != want:
            bad.append((cls, dict(c)))
    check("dataset understanding: each class split 80/10/10 by session", not bad, str(bad[:3]))
    # sessions per class = tshark's TCP+UDP conversations of the class capture (split mode)
    sizes = {}
    for split in ("train", "valid", "test"):
        _, rows = read_tsv(os.path.join(out1, f"{split}_dataset.tsv"))
        sizes[split] = len(rows)
        for label, text in rows:
            toks = text.split(" ")
            # header mode full on Ethernet/IPv4: both MACs and both addresses are zero
            if len(toks) >= 17 and toks[6] == "0800":
                if toks[0:6] != ["0000"] * 6 or toks[13:17] != ["0000"] * 4:
                    check("dataset understanding: full mode zeroes MACs and IPv4 addresses", False, text[:120])
                    return
    check("dataset understanding: full mode zeroes MACs and IPv4 addresses in every Ethernet/IPv4 row", True)
    _, nolabel = read_tsv(os.path.join(out1, "nolabel_test_dataset.tsv"))
    _, test_rows = read_tsv(os.path.join(out1, "test_dataset.tsv"))
    check("dataset understanding: nolabel = the test texts", [r[0] for r in nolabel] == [r[1] for r in test_rows])
    total = sum(sizes.values())
    check(f"dataset understanding: {total} samples = index rows", total == len(index))


def samples_by_origin(out):
    """(class, file, first_frame) -> (label, text) for every sample of a dataset folder. Rows of
    dataset_index.tsv follow the rows of the split files in order."""
    rows = {}
    for split in ("train", "valid", "test"):
        _, rows[split] = read_tsv(os.path.join(out, f"{split}_dataset.tsv"))
    pos = collections.Counter()
    _, index = read_tsv(os.path.join(out, "dataset_index.tsv"))
    result = {}
    for r in index:
        split = r[0]
        label, text = rows[split][pos[split]]
        pos[split] += 1
        result[(r[2], os.path.basename(r[3]), int(r[4]))] = (label, text)
    return result


def test_splitcap_layout(tmp):
    """One capture per session (SplitCap's layout) gives the same samples as the class capture."""
    per_session = os.path.join(tmp, "per-session")
    whole = os.path.join(tmp, "whole")
    rows = collections.defaultdict(list)
    import csv
    with open(os.path.join(DATA, "labeled", "ustc-tfc2016", "index.csv")) as f:
        for r in csv.DictReader(f):
            if r["class"] in ("Facetime", "MySQL", "Zeus") and len(rows[r["class"]]) < 25:
                rows[r["class"]].append((int(r["first_frame"]), int(r["n_frames"])))
    wanted = {}
    for cls, sessions in rows.items():
        os.makedirs(os.path.join(per_session, cls))
        os.makedirs(os.path.join(whole, cls))
        src = os.path.join(USTC, cls, cls + ".pcap")
        os.symlink(src, os.path.join(whole, cls, cls + ".pcap"))
        for i, (first, n) in enumerate(sessions):
            name = f"session{i:03d}.pcap"
            subprocess.run(["editcap", "-r", src, os.path.join(per_session, cls, name), f"{first}-{first + n - 1}"],
                           check=True, capture_output=True)
            wanted[(cls, name)] = first
    a, b = os.path.join(tmp, "layout-a"), os.path.join(tmp, "layout-b")
    common = ["--quiet", "--port-reuse", "merge", "--samples_per_class", "100000"]
    netlm("dataset", "understanding", "--pcap_path", per_session, "--dataset_dir", a, *common)
    netlm("dataset", "understanding", "--pcap_path", whole, "--dataset_dir", b, *common)
    sa, sb = samples_by_origin(a), samples_by_origin(b)
    check(f"dataset SplitCap layout: one sample per session file ({len(wanted)})", len(sa) == len(wanted),
          f"{len(sa)} samples")
    differ = [k for k, v in sa.items() if sb.get((k[0], f"{k[0]}.pcap", wanted[(k[0], k[1])])) != v]
    check("dataset SplitCap layout: each sample equals the same session cut from the class capture", not differ,
          str(differ[:3]))


def test_generation(tmp):
    # MySQL: 1502 frames, no truncated ones; every frame is Ethernet/IPv4/TCP in a session.
    root = os.path.join(tmp, "gen-in")
    os.makedirs(os.path.join(root, "MySQL"))
    src = os.path.join(USTC, "MySQL", "MySQL.pcap")
    os.symlink(src, os.path.join(root, "MySQL", "MySQL.pcap"))
    out = os.path.join(tmp, "gen")
    netlm("dataset", "generation", "--quiet", "--pcap_path", root, "--dataset_dir", out, "--samples_per_class",
          "100000", "--header-mode", "seed")
    targets = []
    zeroed = True
    for split in ("train", "valid", "test"):
        _, rows = read_tsv(os.path.join(out, f"{split}_dataset.tsv"))
        for target, text in rows:
            targets.append(target)
            toks = text.split(" ")
            zeroed &= toks[8] == "0000"  # IPv4 total length at frame bytes 16-17
    lens = subprocess.run(["tshark", "-n", "-r", src, "-T", "fields", "-e", "ip.len"], check=True,
                          capture_output=True, text=True).stdout.split()
    expected = sorted(f"0000 {int(x):04x}" for x in lens)
    check(f"dataset generation: {len(targets)} targets = tshark's ip.len of every frame", sorted(targets) == expected,
          f"{len(targets)} vs {len(expected)}")
    check("dataset generation: total length zeroed in every input", zeroed)
    settings = json.load(open(os.path.join(out, "dataset.json")))
    check("dataset generation: dataset.json records the fields and the header mode",
          settings["task"] == "generation" and settings["fields"] == ["ip_len"]
          and settings["tokenizer"]["header_mode"] == "seed" and settings["tokenizer"]["packets"] == 101, settings)


def test_preprocess(tmp):
    # the seed's scripts write corpora/traffic.txt without making corpora/ first
    corpus = os.path.join(tmp, "corpora", "new", "c.txt")
    made = netlm("corpus", "--quiet", "--pcap_path", os.path.join(PCAPS, "tcpdump-ssh.pcap"), "-o", corpus, ok=False)
    check("corpus -o into folders that do not exist yet: created", made.returncode == 0 and os.path.isfile(corpus),
          made.stderr)
    blocked = os.path.join(tmp, "corpora", "new", "c.txt", "x.txt")  # a file where a folder would go
    bad = netlm("corpus", "--quiet", "--pcap_path", os.path.join(PCAPS, "tcpdump-ssh.pcap"), "-o", blocked, ok=False)
    check("corpus -o under a file: one error line naming it", bad.returncode != 0
          and len(bad.stderr.strip().splitlines()) == 1 and "c.txt" in bad.stderr, bad.stderr)
    shard = os.path.join(tmp, "c.bin")
    netlm("preprocess", "--quiet", "--corpus_path", corpus, "--dataset_path", shard, "--seq_length", "128")
    lines = [ln.split() for ln in open(corpus).read().split("\n") if ln.strip()]
    with open(shard, "rb") as f:
        blob = f.read()
    magic, version, hsize, ntok, ndocs, vocab, seq = struct.unpack("<8sIIQQII", blob[:40])
    ids = struct.unpack(f"<{ntok}I", blob[64:])
    expected = []
    for toks in lines:
        expected += [2] + [5 + int(t, 16) for t in toks] + [1]
    check("preprocess: header", (magic, version, hsize, ndocs, vocab, seq) ==
          (b"NETLMTOK", 1, 64, len(lines), 65541, 128), str((magic, version, hsize, ndocs, vocab, seq)))
    check("preprocess: ids = [CLS] + 5 + token value + [SEP] per corpus line", list(ids) == expected)
    check("preprocess: file size", len(blob) == 64 + 4 * ntok)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for t in (test_corpus, test_understanding, test_splitcap_layout, test_generation, test_preprocess):
            try:
                t(tmp)
            except Exception as e:
                check(t.__name__, False, repr(e))
    return summary()


if __name__ == "__main__":
    sys.exit(main())
