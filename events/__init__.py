"""The bus and what flows on it: events, subjects, the embedded server, watchers.

This package imports nothing else of ranvier's; everything else builds on it.
"""
