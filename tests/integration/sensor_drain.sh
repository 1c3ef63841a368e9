#!/usr/bin/env bash
# Integration: SIGTERM in the middle of a replay drains: complete last line, one verdict per ready session.
exec /usr/bin/python3 "$(dirname "$0")/sensor_drain.py"
