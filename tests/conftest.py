"""Shared fixtures. Real servers (nats-server, prometheus) start on free ports, never fixed ones."""
