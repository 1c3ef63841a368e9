#!/usr/bin/python3
"""sensor_drain.py — SIGTERM in the middle of `netlm replay` (reader waits for a full queue, the
default): the run stops reading, ends the open flows with reason shutdown, classifies every
session that got ready, writes the final stats event and exits 0. Checked: the output ends with a
complete line, every line is valid, the final stats' sessions.ready equals the classification
events (one per flow), and input was really cut short."""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sensor_common import DATA, MODEL, NETLM, by_type, check, finish, read_events, stop  # noqa: E402


def main():
    sessions = os.path.join(DATA, "labeled", "ustc-tfc2016", "sessions")
    if not os.path.isdir(sessions):
        print("skipped: no USTC-TFC2016 sessions in", DATA)
        sys.exit(0)
    # ~14 k sessions, 51 k packets: several seconds of model time, so a signal lands midway
    with tempfile.TemporaryDirectory() as tmp:
        # a short ready queue keeps the drain short: at the signal at most 256 sessions wait; one
        # model thread keeps TSan runs free of OpenMP-runtime noise
        conf = os.path.join(tmp, "drain.conf")
        with open(conf, "w") as f:
            f.write("session = { queue_size = 256; };\nmodel = { threads = 1; };\n")
        for target, label in ((os.path.join(tmp, "events.json"), "file"), ("-", "stdout")):
            cmd = [NETLM, "replay", "-c", conf, "-m", MODEL, "-q", "-w", "2", "--stats-interval", "0.5", "-o", target, sessions]
            stdout = open(os.path.join(tmp, "stdout"), "w")
            proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
            # signal once the first verdicts are out (not after a fixed delay: under a sanitizer
            # on a loaded machine loading the model alone can take longer than any fixed guess)
            # (replay -o writes FILE.tmp.PID until the end)
            out_path = f"{target}.tmp.{proc.pid}" if target != "-" else os.path.join(tmp, "stdout")
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    with open(out_path) as f:
                        if '"event_type":"classification"' in f.read():
                            break
                except FileNotFoundError:
                    pass
                time.sleep(0.1)
            time.sleep(float(os.environ.get("SENSOR_DRAIN_DELAY", "0.5")))
            err = stop(proc, 300)
            stdout.close()
            check(f"{label}: exit 0 after SIGTERM", proc.returncode == 0, f"rc {proc.returncode}: {err.strip()}")
            check(f"{label}: stderr says it drained", "draining" in err, err.strip())
            path = target if target != "-" else os.path.join(tmp, "stdout")
            with open(path) as f:
                text = f.read()
            events = read_events(text, f"drain to {label}")
            cls = by_type(events, "classification")
            stats = by_type(events, "stats")
            if not check(f"{label}: stats events, the last one last", stats and events[-1] is stats[-1]):
                continue
            final = stats[-1]["stats"]
            s = final["sessions"]
            ids = [e["flow_id"] for e in cls]
            check(f"{label}: one classification per flow", len(ids) == len(set(ids)))
            check(f"{label}: final sessions.ready {s['ready']} == classification events {len(cls)}, none skipped",
                  s["ready"] == len(cls) == s["classified"] and s["skipped"] == 0, str(s))
            check(f"{label}: the signal came midway ({final['capture']['packets']} of 51226 packets read)",
                  0 < final["capture"]["packets"] < 51226, str(final["capture"]))
            flows = by_type(events, "flow")
            check(f"{label}: flows still open at the signal end with reason shutdown",
                  any(f["flow"]["reason"] == "shutdown" for f in flows))
            check(f"{label}: events.dropped 0", final["events"]["dropped"] == 0, str(final["events"]))
    finish()


if __name__ == "__main__":
    main()
