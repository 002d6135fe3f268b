"""Command-line entry points: `workers` and `bullrq`.

The top of the house: may import every part of `app` (it starts the web server and the local servers).
"""
