"""Watchers turn the outside world (task processes, metrics, clocks) into events on the bus."""
