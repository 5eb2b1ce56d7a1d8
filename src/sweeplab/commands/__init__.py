"""The top layer: one module per command group, each a thin handler over the layers below; `cli.py` wires them."""
