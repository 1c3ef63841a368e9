#!/usr/bin/env bash
# Integration: pcapng files whose interfaces differ (link type, snap length, time resolution),
# read by netlm's own pcapng reader, against tshark; and the idle-timeout flags.
exec /usr/bin/python3 "$(dirname "$0")/pcapng_inputs.py"
