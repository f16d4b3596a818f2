"""CLI command groups, one module each; `ranvier.cli` registers them."""
