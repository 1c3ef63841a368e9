#!/usr/bin/python3
"""sensor_replay.py — `netlm replay` equals offline `netlm classify` on real captures.

For every classification event of the replay, the same session from `netlm classify` (captures
mode, --emit-tokens) is found by flow_id == first_frame (one file per run, so the run-wide ordinal
of a session's first frame is its frame number) and the 5-tuple. The sensor classifies a session
as soon as it is ready (session.ready_packets = 8 packets, or its first FIN/RST, or its end),
while classify sees the session's first packets.packets (32) packets. The model reads seq_length
128 ids = [CLS] + 126 tokens + [SEP]: 64 tokens per packet at most, so the first 2 full-size
packets fill it, and 8 packets of even 54-byte frames (27 tokens each) do too. So:
  - a session readied by its 8th packet must have exactly classify's ids, and the same label;
  - a session readied earlier (first FIN/RST, or its end) with fewer tokens than 126 may differ
    from classify only by classify's extra later packets: the sensor's ids minus the closing
    [SEP] must then be a prefix of classify's, and whenever the ids are equal the labels are too.
The differing sessions are counted and printed, so the comparison says what it proves.
The stats event's latency percentiles are checked against the exact ones of the events. With
classification off (--no-model, model.task = "none") the flow events must be those of a replay
with the model (5-tuples, counts, times, state, reason), with no classification events.
Every line of every run is validated against schema/events.schema.json."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sensor_common import (DATA, MODEL, NETLM, SRC, by_type, check, finish, read_events)  # noqa: E402

SEP = 1


def run(*args, **kw):
    return subprocess.run([NETLM, *args], capture_output=True, text=True, **kw)


def classify_rows(path):
    res = run("classify", "-m", MODEL, "--format", "json", "--emit-tokens", "-q", "-t", "2", path)
    if not check(f"classify {os.path.basename(path)} exits 0", res.returncode == 0, res.stderr.strip()):
        return {}
    rows = {}
    for line in res.stdout.splitlines():
        r = json.loads(line)
        rows[r["first_frame"]] = r
    return rows


def compare(path, workers):
    name = f"{os.path.basename(path)} (-w {workers})"
    res = run("replay", "-m", MODEL, "--emit-tokens", "-q", "-w", str(workers), path)
    if not check(f"replay {name} exits 0", res.returncode == 0, res.stderr.strip()):
        return
    events = read_events(res.stdout, f"replay {name}")
    cls = by_type(events, "classification")
    flows = by_type(events, "flow")
    stats = by_type(events, "stats")
    check(f"{name}: one final stats event", len(stats) == 1 and events[-1]["event_type"] == "stats",
          f"{len(stats)} stats events")
    check(f"{name}: classification events", len(cls) > 0, "none")
    ids = [e["flow_id"] for e in cls]
    check(f"{name}: at most one classification per flow", len(ids) == len(set(ids)), "duplicates")
    if stats:
        s = stats[-1]["stats"]["sessions"]
        check(f"{name}: stats sessions.ready {s['ready']} == classified {s['classified']} == events {len(cls)}",
              s["ready"] == s["classified"] == len(cls) and s["skipped"] == 0, str(s))
    verdicts = {f["flow_id"] for f in flows if f["flow"]["verdict"]}
    check(f"{name}: flow events with verdict true are exactly the classified flows", verdicts == set(ids),
          f"{len(verdicts ^ set(ids))} differ")
    check(f"{name}: every event names its pcap", all(e.get("pcap_filename") == path for e in cls + flows))

    rows = classify_rows(path)
    if not rows:
        return
    same = prefix = bad = 0
    bad_detail = []
    for e in cls:
        r = rows.get(e["flow_id"])
        tup = (e["proto"], e["src_ip"], e["src_port"], e["dest_ip"], e["dest_port"])
        if not r or (r["proto"], r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"]) != tup:
            bad += 1
            bad_detail.append(f"flow {e['flow_id']}: no classify session with that first frame and 5-tuple")
            continue
        c = e["classification"]
        mine, theirs = c["tokens"], r["token_ids"]
        if mine == theirs:
            same += 1
            if c["label"] != r["label"] or c["label_id"] != r["label_id"]:
                bad += 1
                bad_detail.append(f"flow {e['flow_id']}: same ids, label {c['label']} vs classify {r['label']}")
            continue
        body = mine[:-1] if mine and mine[-1] == SEP else mine
        if c["trigger"] != "packets" and len(mine) < 128 and theirs[:len(body)] == body:
            prefix += 1  # readied before its later packets arrived: classify saw more of it
        else:
            bad += 1
            bad_detail.append(f"flow {e['flow_id']} trigger {c['trigger']}: ids differ ({len(mine)} vs {len(theirs)})")
    check(f"{name}: {same} sessions with classify's exact ids and label, {prefix} readied early "
          f"(FIN/RST/end: a prefix of classify's ids), 0 unexplained", bad == 0 and same > 0,
          f"{bad} unexplained: " + "; ".join(bad_detail[:5]))
    # the sessions readied early too: their own ids as a TSV through `netlm classify` give the label
    # the sensor gave (the same model on the same input, whatever the packets were)
    with tempfile.TemporaryDirectory() as tmp:
        tsv = os.path.join(tmp, "ids.tsv")
        with open(tsv, "w") as f:
            f.write("text_a\n")
            for e in cls:
                body = [i for i in e["classification"]["tokens"] if i >= 5]  # [CLS]/[SEP]/[PAD] are added back by classify
                f.write(" ".join(f"{i - 5:04x}" for i in body) + "\n")
        res = run("classify", "-m", MODEL, "--test_path", tsv, "--format", "json", "-q", "-t", "2")
        if check(f"{name}: classify of the sensor's own ids exits 0", res.returncode == 0, res.stderr.strip()):
            labels = [json.loads(line)["label"] for line in res.stdout.splitlines()]
            diff = [e["flow_id"] for e, lab in zip(cls, labels) if e["classification"]["label"] != lab]
            check(f"{name}: all {len(cls)} labels equal classify's on the same ids", len(labels) == len(cls) and not diff,
                  f"{len(diff)} differ: {diff[:5]}")
    # the stats event's latency percentiles (a log-linear histogram, 16 sub-buckets per power of
    # two) against the exact ones of the events (nearest rank): never below, at most 6.25 % above
    if stats and cls:
        lat = sorted(e["classification"]["latency_us"] for e in cls)
        sl = stats[-1]["stats"]["latency_us"]
        bad = []
        for p in (50, 90, 99):
            exact = lat[(len(lat) * p + 99) // 100 - 1]
            if not exact <= sl[f"p{p}"] <= max(exact * 1.0625 + 1, exact + 1):
                bad.append(f"p{p}: stats {sl[f'p{p}']} vs exact {exact}")
        check(f"{name}: stats latency p50/p90/p99 within 6.25 % above the exact percentiles", not bad and
              sl["max"] == lat[-1], f"{bad}, max {sl['max']} vs {lat[-1]}")
    readied_by_count = [e for e in cls if e["classification"]["trigger"] == "packets"]
    check(f"{name}: every session readied by its 8th packet used 8 packets",
          all(e["classification"]["packets"] == 8 for e in readied_by_count))
    # every classify session with at least 8 packets got ready by its packet count, or earlier
    missing = [ff for ff, r in rows.items() if r["packets"] >= 8 and ff not in set(ids)]
    check(f"{name}: every session of 8+ packets was classified", not missing, f"{len(missing)} missing")


FLOW_FIELDS = ("pkts_toserver", "pkts_toclient", "bytes_toserver", "bytes_toclient", "start", "end", "state", "reason")


def flow_table(events):
    """flow events keyed by flow_id and 5-tuple, with what classification off must not change."""
    return {(e["flow_id"], e["proto"], e["src_ip"], e["src_port"], e["dest_ip"], e["dest_port"], e.get("vlan")):
            tuple(e["flow"][k] for k in FLOW_FIELDS) for e in by_type(events, "flow")}


def compare_no_model(path, workers):
    """--no-model (classification off): the same flow events as a replay with the model, no
    classification events, the sessions counters 0 — and the same with model.task = "none"."""
    name = f"{os.path.basename(path)} --no-model (-w {workers})"
    res = run("replay", "-m", MODEL, "-q", "-w", str(workers), path)
    if not check(f"replay {os.path.basename(path)} (-w {workers}) exits 0", res.returncode == 0, res.stderr.strip()):
        return
    ref = read_events(res.stdout, f"replay {os.path.basename(path)}")
    res = run("replay", "--no-model", "-q", "-w", str(workers), path)
    if not check(f"replay {name} exits 0", res.returncode == 0, res.stderr.strip()):
        return
    ev = read_events(res.stdout, f"replay {name}")
    check(f"{name}: no classification or generation events",
          not by_type(ev, "classification") and not by_type(ev, "generation"))
    check(f"{name}: only flow events and one final stats event",
          {e["event_type"] for e in ev} <= {"flow", "stats"} and len(by_type(ev, "stats")) == 1
          and ev[-1]["event_type"] == "stats")
    mine, theirs = flow_table(ev), flow_table(ref)
    diff = sorted(set(mine.items()) ^ set(theirs.items()))
    check(f"{name}: the same {len(theirs)} flow events (5-tuples, packets/bytes each way, times, state, reason) "
          "as with the model", mine == theirs and len(mine) == len(by_type(ev, "flow")) and mine,
          f"{len(diff)} differ: {diff[:3]}")
    check(f"{name}: every flow event says verdict false", all(not e["flow"]["verdict"] for e in by_type(ev, "flow")))
    st, rst = ev[-1]["stats"], ref[-1]["stats"]
    check(f"{name}: sessions counters 0, no batches", st["sessions"] == {"ready": 0, "skipped": 0, "classified": 0}
          and st["batches"]["count"] == 0, str(st["sessions"]))
    check(f"{name}: capture, decoder and flow counters equal the replay's with the model",
          st["capture"] == rst["capture"] and st["decoder"] == rst["decoder"]
          and st["flow"]["created"] == rst["flow"]["created"], f"{st['flow']} vs {rst['flow']}")
    check(f"{name}: no packet stored (memory below the replay's with the model)",
          st["flow"]["memory_bytes"] <= rst["flow"]["memory_bytes"], f"{st['flow']['memory_bytes']} vs "
          f"{rst['flow']['memory_bytes']}")
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "none.conf")
        with open(conf, "w") as f:
            f.write('model = { task = "none"; };\n')
        res = run("replay", "-c", conf, "-q", "-w", str(workers), path)
        if check(f"{name}: model.task = \"none\" in the config exits 0", res.returncode == 0, res.stderr.strip()):
            ev2 = read_events(res.stdout, f"replay {os.path.basename(path)} task none")
            check(f"{name}: model.task = \"none\" gives the same flow events as --no-model", flow_table(ev2) == mine)
        res = run("replay", "-c", conf, "-m", MODEL, "-q", path)
        check(f"{name}: model.task = \"none\" with -m is a usage error (exit 2, one line)",
              res.returncode == 2 and "no model is used" in res.stderr and len(res.stderr.splitlines()) == 1
              and not res.stdout, f"rc {res.returncode}: {res.stderr.strip()}")


def fragments(workers):
    """Later IP fragments join their datagram's session: every frame of a capture of fragmented
    DNS answers (IPv4 and IPv6) is in some flow event, and the stats count the 7 joined."""
    path = os.path.join(DATA, "pcaps", "ndpi-dns_fragmented.pcap")
    name = f"{os.path.basename(path)} (-w {workers})"
    res = run("replay", "--no-model", "-q", "-w", str(workers), path)
    if not check(f"replay {name} exits 0", res.returncode == 0, res.stderr.strip()):
        return
    ev = read_events(res.stdout, f"replay {name}")
    st = ev[-1]["stats"]
    pkts = sum(e["flow"]["pkts_toserver"] + e["flow"]["pkts_toclient"] for e in by_type(ev, "flow"))
    check(f"{name}: flow events hold every frame ({pkts} of {st['capture']['packets']}), "
          f"the {st['decoder']['fragment']} later fragments joined",
          pkts == st["capture"]["packets"] == 66 and st["flow"]["fragments_joined"] == st["decoder"]["fragment"] == 7,
          str(st["flow"]))


def main():
    demo = os.path.join(SRC, "data", "demo.pcap")
    gmail = os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions", "Gmail", "Gmail.pcap")
    compare(demo, 1)
    compare(demo, 2)
    if os.path.exists(gmail):
        compare(gmail, 2)
    compare_no_model(demo, 1)
    if os.path.exists(gmail):
        compare_no_model(gmail, 2)
    fragments(1)
    fragments(2)
    # output to a file: written whole, then renamed; --no-flow-events; --drop still classifies
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "events.json")
        res = run("replay", "-m", MODEL, "-q", "--no-flow-events", "--drop", "-o", out, demo)
        check("replay -o FILE exits 0", res.returncode == 0, res.stderr.strip())
        check("replay -o FILE leaves only the file", os.listdir(tmp) == ["events.json"], str(os.listdir(tmp)))
        if os.path.exists(out):
            with open(out) as f:
                ev = read_events(f.read(), "replay -o FILE")
            check("--no-flow-events: no flow events", not by_type(ev, "flow"))
            st = by_type(ev, "stats")[-1]["stats"]
            check("--drop: every ready session is classified or counted skipped",
                  st["sessions"]["ready"] == st["sessions"]["classified"] + st["sessions"]["skipped"], str(st["sessions"]))
    # a unix stream socket: a listener collects the lines; then one that is not there (dropped, counted)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "eve.sock")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        got = []

        def serve():
            conn, _ = srv.accept()
            with conn:
                while True:
                    b = conn.recv(65536)
                    if not b:
                        break
                    got.append(b)

        t = threading.Thread(target=serve)
        t.start()
        res = run("replay", "-m", MODEL, "-q", "-o", "unix:" + path, demo)
        t.join(timeout=60)
        srv.close()
        check("replay -o unix:PATH exits 0", res.returncode == 0, res.stderr.strip())
        ev = read_events(b"".join(got).decode(), "replay to a unix socket")
        check("unix socket: every event arrived", len(by_type(ev, "classification")) == 29 and
              ev and ev[-1]["event_type"] == "stats", f"{len(ev)} events")
        res = run("replay", "-m", MODEL, "-q", "--no-flow-events", "-o", "unix:" + path, demo)
        # a replay's events would all be lost (a live sensor waits for its collector instead)
        check("no listener: exit 1, one line saying it cannot connect", res.returncode == 1 and
              "cannot connect" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr.strip())
    # generation: a fresh (random) 1-layer generate model of the bundled model's shape; the events
    # must be well formed and one per ready session (what it generates is noise)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(MODEL, "config.json")) as f:
            c = json.load(f)
        c["n_layer"] = 1
        c["netlm"]["task"] = "generate"
        c["netlm"].pop("labels", None)
        c["netlm"].pop("num_labels", None)
        with open(os.path.join(tmp, "gen.json"), "w") as f:
            json.dump(c, f)
        gen = os.path.join(tmp, "gen")
        res = run("convert", "--config-path", os.path.join(tmp, "gen.json"), "--to", gen)
        if check("a generate model for the test", res.returncode == 0, res.stderr.strip()):
            res = run("replay", "-m", gen, "-q", "--emit-tokens", demo)
            check("replay with a generate model exits 0", res.returncode == 0, res.stderr.strip())
            ev = read_events(res.stdout, "replay generate")
            gens = by_type(ev, "generation")
            st = by_type(ev, "stats")[-1]["stats"]["sessions"]
            check(f"one generation event per ready session ({len(gens)})", len(gens) == st["ready"] > 0, str(st))
            check("generation events name the field ip_len",
                  all(g["generation"]["field"] == "ip_len" for g in gens))
    finish()


if __name__ == "__main__":
    main()
