"""The bottom layer: names and errors every other layer shares. Imports nothing of sweeplab."""
