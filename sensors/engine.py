"""PURE rules engine: step(state, event, now) -> (state, decisions). No I/O imports."""
