#!/usr/bin/env bash
# Integration: `netlm sensor` on the loopback interface (root only): events, SIGHUP, SIGUSR2 reload, drain.
exec /usr/bin/python3 "$(dirname "$0")/sensor_live.py"
