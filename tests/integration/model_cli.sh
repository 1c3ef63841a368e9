#!/usr/bin/env bash
# Integration: netlm classify, generate and convert against the PyTorch twin's fixtures.
exec /usr/bin/python3 "$(dirname "$0")/model_cli.py"
