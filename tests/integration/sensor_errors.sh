#!/usr/bin/env bash
# Integration: bad config, missing model, unknown interface, unreadable capture: one line, non-zero exit, no output.
exec /usr/bin/python3 "$(dirname "$0")/sensor_errors.py"
