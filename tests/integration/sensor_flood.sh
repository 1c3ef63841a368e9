#!/usr/bin/env bash
# Integration: 1 M distinct SYNs against flow.max_flows 100 k: memory bounded, emergency counters move, real sessions mixed in still classified.
exec /usr/bin/python3 "$(dirname "$0")/sensor_flood.py"
