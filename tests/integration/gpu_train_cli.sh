#!/usr/bin/env bash
# Integration (label cuda): the training commands on a GPU against the CPU; skipped (77) without one.
exec /usr/bin/python3 "$(dirname "$0")/gpu_train_cli.py"
