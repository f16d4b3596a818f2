"""Safe condition language: {{metric}} templates and a PromQL subset. Never eval()."""
