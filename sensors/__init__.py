"""Deciding: the Axon format, the condition language and the pure rules engine."""
