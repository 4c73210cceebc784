"""Experiments: arms (conditions) compared on a suite of tasks and seeds, with paired
statistics over the same held-out items, costs, and compute estimates."""
