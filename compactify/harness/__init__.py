"""Measuring tools shared by verify, bench, demo and benchmarks: error metrics, latency, machine info, reports."""
