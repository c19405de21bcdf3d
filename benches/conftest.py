"""Benchmarks: tokenwire side by side with its peers, one ``group`` per comparison.

Run timed with ``make bench``; ``make test`` runs them once each as smoke tests (``--benchmark-disable``).
Each benchmark checks its output once before timing, so a fast wrong answer fails.
"""
