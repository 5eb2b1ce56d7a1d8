"""Analysis of logged sweeps: best configs, reference tables, figures and exports (no torch)."""
