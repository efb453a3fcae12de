"""maskwatch benchmarks: ``python -m bench`` (inference, whole flow, baseline); ``bench/gpu.sh`` on a GPU.

``bench_dashboard.py`` (dashboard queries) is separate and run on its own.
"""
