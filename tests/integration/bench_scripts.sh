#!/usr/bin/env bash
# Integration: the GPU check's scripts, where no GPU is (bench_scripts.py says what is checked).
exec /usr/bin/python3 "$(dirname "$0")/bench_scripts.py"
