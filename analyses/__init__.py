"""Measurements on top of `probe`: patching, circuits, depth, neurons, generation, comparison."""
