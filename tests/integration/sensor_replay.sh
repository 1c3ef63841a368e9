#!/usr/bin/env bash
# Integration: `netlm replay` equals offline `netlm classify` (ids and labels), events valid against the schema.
exec /usr/bin/python3 "$(dirname "$0")/sensor_replay.py"
