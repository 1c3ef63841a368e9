#!/usr/bin/env bash
# Integration: `netlm sensor` capturing through DPDK (a net_pcap virtual port) equals `netlm replay`.
exec /usr/bin/python3 "$(dirname "$0")/sensor_dpdk.py"
