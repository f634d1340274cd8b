"""Execution primitives shared by every adapter: precision, distributed, sampling, determinism.

Depends on torch only, so an adapter can use any of it without pulling in the harness.
"""
