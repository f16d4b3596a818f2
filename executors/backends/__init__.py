"""Backends run tasks: `local` (processes on this machine) and `kubernetes`."""
