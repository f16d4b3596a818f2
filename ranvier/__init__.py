"""ranvier: the composition root. Wires events, sensors and executors into roles and a CLI."""

__version__ = "0.1.0"
