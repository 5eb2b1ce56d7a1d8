"""Sweeps on Ray: `launch` (the CLI handlers) and `ray_backend` (every Ray call)."""
