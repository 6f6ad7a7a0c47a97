"""Benchmarks, cnnkern against torch.nn (`pytest benchmarks/ --benchmark-only`).

A package so the benchmark modules import conftest's helpers by an unambiguous
name (tests/ has a conftest.py of its own) and their basenames cannot collide
with tests/.
"""
