#!/usr/bin/env bash
# Integration: outputs that are devices, pipes, links, folders or an input; captures beside other files; a replay socket that fails; a full disk under the sensor.
exec /usr/bin/python3 "$(dirname "$0")/output_targets.py"
