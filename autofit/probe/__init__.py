"""Probing: a real short training run in its own process, measured and classified.

runner.py (parent side, no torch) starts worker.py (child side, the GPU stack) and talks to it
through files in a small I/O directory, so the same protocol works for one process or N ranks.
"""
