#!/usr/bin/env bash
# Integration: file names that are not UTF-8 or hold tabs and newlines, standard input and pipes,
# inputs given twice, and sessions whose packet times step back.
exec /usr/bin/python3 "$(dirname "$0")/names_and_inputs.py"
