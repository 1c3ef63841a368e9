#!/usr/bin/env bash
# Integration: corpus, dataset and preprocess end to end on real captures.
exec /usr/bin/python3 "$(dirname "$0")/pipeline.py"
