#!/usr/bin/env bash
# Integration: netlm's sessions equal tshark's conversations on every shared real capture.
exec /usr/bin/python3 "$(dirname "$0")/sessions_vs_tshark.py"
