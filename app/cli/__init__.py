"""Command-line entry points: `workers` and `bullrq`."""
