"""Doing: action requests are claimed once and carried out by a backend."""
