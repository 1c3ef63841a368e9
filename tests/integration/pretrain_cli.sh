#!/usr/bin/env bash
# Integration: pretrain on shards from a real capture; it learns, the model loads, exact resume,
# bad inputs.
exec /usr/bin/python3 "$(dirname "$0")/pretrain_cli.py"
