#!/usr/bin/env bash
# Integration: finetune and eval on a small real labelled sample; exact resume.
exec /usr/bin/python3 "$(dirname "$0")/train_cli.py"
