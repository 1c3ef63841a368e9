#!/usr/bin/env bash
# Integration: `netlm sensor` on a veth in a network namespace, fed by tcpreplay, equals `netlm replay` of the same captures (root; skipped otherwise).
exec /usr/bin/python3 "$(dirname "$0")/sensor_netns.py"
