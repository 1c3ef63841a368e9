#!/usr/bin/python3
"""sensor_common.py — shared by the sensor_*.py tests: a small JSON Schema validator (the subset
schema/events.schema.json uses, so the tests need no python3-jsonschema), event-file readers and
the check/report helpers (common.py's)."""
import json
import os
from collections import Counter
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pcapfile  # noqa: E402
from common import check, finish  # noqa: E402,F401 (the sensor tests import them from here)

NETLM = os.environ.get("NETLM", "netlm")
DATA = os.environ.get("NETLM_DATA_DIR", "")
SRC = os.environ.get("NETLM_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODEL = os.path.join(SRC, "models", "ustc-tfc2016")
SCHEMA_PATH = os.path.join(SRC, "schema", "events.schema.json")


# ---- a JSON Schema (draft 2020-12 subset) validator ----

class Validator:
    """type, enum, const, required, properties, additionalProperties, items, minItems, pattern,
    minLength, maxLength, minimum, maximum, allOf, oneOf, local $ref, boolean schemas."""

    def __init__(self, schema):
        self.root = schema

    def resolve(self, ref):
        assert ref.startswith("#/"), ref
        node = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    @staticmethod
    def type_ok(value, t):
        if isinstance(t, list):
            return any(Validator.type_ok(value, x) for x in t)
        if t == "object":
            return isinstance(value, dict)
        if t == "array":
            return isinstance(value, list)
        if t == "string":
            return isinstance(value, str)
        if t == "boolean":
            return isinstance(value, bool)
        if t == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if t == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if t == "null":
            return value is None
        raise ValueError(t)

    def errors(self, value, schema, path="$"):
        """A list of error strings (empty = valid)."""
        if schema is True:
            return []
        if schema is False:
            return [f"{path}: not allowed"]
        errs = []
        if "$ref" in schema:
            errs += self.errors(value, self.resolve(schema["$ref"]), path)
        if "type" in schema and not self.type_ok(value, schema["type"]):
            return errs + [f"{path}: expected {schema['type']}, got {type(value).__name__}"]
        if "const" in schema and value != schema["const"]:
            errs.append(f"{path}: expected {schema['const']!r}, got {value!r}")
        if "enum" in schema and value not in schema["enum"]:
            errs.append(f"{path}: {value!r} not in {schema['enum']}")
        if isinstance(value, str):
            if "pattern" in schema and not re.search(schema["pattern"], value):
                errs.append(f"{path}: {value!r} does not match {schema['pattern']}")
            if "minLength" in schema and len(value) < schema["minLength"]:
                errs.append(f"{path}: shorter than {schema['minLength']}")
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                errs.append(f"{path}: longer than {schema['maxLength']}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                errs.append(f"{path}: {value} < {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                errs.append(f"{path}: {value} > {schema['maximum']}")
        if isinstance(value, dict):
            for key in schema.get("required", []):
                if key not in value:
                    errs.append(f"{path}: missing '{key}'")
            props = schema.get("properties", {})
            for key, sub in value.items():
                if key in props:
                    errs += self.errors(sub, props[key], f"{path}.{key}")
                elif "additionalProperties" in schema:
                    errs += self.errors(sub, schema["additionalProperties"], f"{path}.{key}")
        if isinstance(value, list):
            if "minItems" in schema and len(value) < schema["minItems"]:
                errs.append(f"{path}: fewer than {schema['minItems']} items")
            if "items" in schema:
                for i, item in enumerate(value):
                    errs += self.errors(item, schema["items"], f"{path}[{i}]")
        for sub in schema.get("allOf", []):
            errs += self.errors(value, sub, path)
        if "oneOf" in schema:
            matches = [self.errors(value, sub, path) for sub in schema["oneOf"]]
            n = sum(1 for m in matches if not m)
            if n != 1:
                best = min(matches, key=len) if matches else []
                errs.append(f"{path}: matches {n} of oneOf" + (f" (closest: {best[:3]})" if n == 0 else ""))
        return errs


_validator = None


def validator():
    global _validator
    if _validator is None:
        with open(SCHEMA_PATH) as f:
            _validator = Validator(json.load(f))
    return _validator


def read_events(text, name):
    """Parses JSON lines; checks each against the schema and that the text ends with a newline.
    Returns the events."""
    events, bad = [], []
    check(f"{name}: output ends with a complete line", text == "" or text.endswith("\n"),
          repr(text[-80:]))
    for n, line in enumerate(text.splitlines(), 1):
        try:
            ev = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {n}: not JSON ({e}): {line[:120]}")
            continue
        errs = validator().errors(ev, validator().root)
        if errs:
            bad.append(f"line {n}: {errs[:3]}")
        events.append(ev)
    check(f"{name}: {len(events)} lines valid against schema/events.schema.json", not bad, "; ".join(bad[:5]))
    return events


def by_type(events, t):
    return [e for e in events if e.get("event_type") == t]


def wait_for(pred, timeout=20.0, interval=0.1):
    """Polls pred until it holds (True) or timeout seconds pass (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(interval)
    return False


def stop(proc, timeout=60):
    """SIGTERM to a running sensor, then its stderr once it has drained (killed after timeout
    seconds: a drain that hangs fails the caller's exit-status check instead of the whole test)."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def one_line_error(name, res, must_contain, out_dir=None, exit_codes=None):
    """A command that failed as bad input must: a non-zero exit (one of exit_codes when given),
    exactly one stderr line naming each of must_contain, nothing on stdout, and no file left in
    out_dir."""
    lines = res.stderr.strip().splitlines()
    check(f"{name}: exit status {'one of ' + str(exit_codes) if exit_codes else 'non-zero'}",
          res.returncode in exit_codes if exit_codes else res.returncode != 0, f"rc {res.returncode}")
    check(f"{name}: exactly one stderr line", len(lines) == 1, repr(res.stderr))
    for word in must_contain:
        check(f"{name}: message names {word!r}", word in res.stderr, res.stderr.strip())
    check(f"{name}: nothing on stdout", res.stdout == "", res.stdout[:200])
    if out_dir is not None:
        check(f"{name}: no output file left", os.listdir(out_dir) == [], str(os.listdir(out_dir)))


# ---- a live sensor against `netlm replay` of the same frames (sensor_netns.py, sensor_dpdk.py) ----

def write_conf_no_timeouts(path, capture, out):
    """A sensor config with the given capture section, every idle timeout and emergency mode off
    (the clock of live frames is today's, not the capture's: see compare_with_replay), the
    bundled model, events into out."""
    with open(path, "w") as f:
        f.write(f"""capture = {capture};
flow = {{
  workers = 2; max_flows = 65536;
  timeouts = {{ tcp_new = 0.0; tcp_established = 0.0; tcp_closed = 0.0; udp_new = 0.0;
               udp_established = 0.0; other_new = 0.0; other_established = 0.0; }};
  emergency = {{ enter_pct = 0; leave_pct = 0; }};
}};
session = {{ ready_packets = 8; queue_size = 4096; }};
model = {{ path = "{MODEL}"; threads = 1; batch_timeout_us = 1000; }};
output = {{ type = "file"; filename = "{out}"; stats_interval = 0.2; flow_events = true; }};
service = {{ user = ""; }};
""")


def contents(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def last_stats(path):
    st = None
    for line in contents(path).splitlines():
        if '"event_type":"stats"' in line:
            try:
                st = json.loads(line)["stats"]
            except json.JSONDecodeError:
                pass  # the line being written
    return st


def frame_count(path):
    """Frames in a pcap or pcapng file (demo.pcap is pcapng), counted without libpcap."""
    return sum(1 for _ in pcapfile.frames(path))


def tuple_of(e):
    return (e["proto"], e["src_ip"], e["src_port"], e["dest_ip"], e["dest_port"])


def keyed(events, name):
    out = {}
    dup = []
    for e in events:
        k = tuple_of(e)
        if k in out:
            dup.append(k)
        out[k] = e
    check(f"{name}: one event per 5-tuple", not dup, f"{len(dup)} repeated: {dup[:3]}")
    return out


def compare_with_replay(live, rep, n_frames, same_ids=True):
    """The checks that make a live sensor's events (live) equal to `netlm replay`'s of the same
    frames (rep), run with every idle timeout and emergency mode off: the same frames counted and
    decoded, the same sessions classified with the same labels, triggers and packet counts
    (scores within 1e-4: the batches differ), the same flows with the same counters, and the same
    flow_id for each (the ordinal of its first frame, when every frame arrived and same_ids: a
    sensor reading several queues numbers each queue's frames apart)."""
    lst, rst = by_type(live, "stats"), by_type(rep, "stats")
    if not (lst and rst):
        check("both outputs end with a stats event", False)
        finish()
    ls, rs = lst[-1]["stats"], rst[-1]["stats"]
    check("sensor: exactly the frames sent, no drops (kernel or NIC ring, interface or receive errors)",
          ls["capture"]["packets"] == n_frames and ls["capture"]["kernel_drops"] == 0
          and ls["capture"]["iface_drops"] == 0, str(ls["capture"]))
    check("sensor: every ready session classified, none skipped",
          ls["sessions"]["ready"] == ls["sessions"]["classified"] and ls["sessions"]["skipped"] == 0,
          str(ls["sessions"]))
    check("decoder counters equal replay's", ls["decoder"] == rs["decoder"], f"{ls['decoder']} vs {rs['decoder']}")

    lc, rc = keyed(by_type(live, "classification"), "sensor"), keyed(by_type(rep, "classification"), "replay")
    check(f"classification: the same {len(rc)} sessions (5-tuples)", set(lc) == set(rc) and rc,
          f"only sensor: {sorted(set(lc) - set(rc))[:3]}, only replay: {sorted(set(rc) - set(lc))[:3]}")
    diff = []
    for k in set(lc) & set(rc):
        a, b = lc[k]["classification"], rc[k]["classification"]
        same = (a["label"], a["label_id"], a["trigger"], a["packets"]) == \
               (b["label"], b["label_id"], b["trigger"], b["packets"])
        if not same or abs(a["score"] - b["score"]) > 1e-4:
            diff.append(f"{k}: {a['label']}/{a['trigger']}/{a['packets']}/{a['score']:.6f} vs "
                        f"{b['label']}/{b['trigger']}/{b['packets']}/{b['score']:.6f}")
    check("classification: same label, label_id, trigger, packets; score within 1e-4", not diff,
          f"{len(diff)} differ: {diff[:3]}")
    labels = dict(Counter(e["classification"]["label"] for e in rc.values()))
    print(f"     {len(rc)} sessions classified on both sides; labels: {labels}")

    lf, rf = keyed(by_type(live, "flow"), "sensor flows"), keyed(by_type(rep, "flow"), "replay flows")
    check(f"flow: the same {len(rf)} flows (5-tuples)", set(lf) == set(rf) and rf,
          f"only sensor: {sorted(set(lf) - set(rf))[:3]}, only replay: {sorted(set(rf) - set(lf))[:3]}")
    fields = ("pkts_toserver", "pkts_toclient", "bytes_toserver", "bytes_toclient", "state", "reason", "verdict")
    fdiff = [f"{k}: {[lf[k]['flow'][x] for x in fields]} vs {[rf[k]['flow'][x] for x in fields]}"
             for k in set(lf) & set(rf) if any(lf[k]["flow"][x] != rf[k]["flow"][x] for x in fields)]
    check("flow: same packets and bytes each way, state, reason and verdict", not fdiff,
          f"{len(fdiff)} differ: {fdiff[:3]}")
    print(f"     flow end reasons on the sensor: {dict(Counter(e['flow']['reason'] for e in lf.values()))}")
    if same_ids and ls["capture"]["packets"] == n_frames:
        bad = [k for k in set(lc) & set(rc) if lc[k]["flow_id"] != rc[k]["flow_id"]]
        bad += [k for k in set(lf) & set(rf) if lf[k]["flow_id"] != rf[k]["flow_id"]]
        check("flow_id (ordinal of the first frame) equal to replay's for every session", not bad,
              f"{len(bad)} differ: {bad[:3]}")
