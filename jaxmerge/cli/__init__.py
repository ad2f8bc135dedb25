"""The `jaxmerge` command: `main.py` holds the explicit command table, then one module per
command (merge, inspect, train, demo). A command module parses flags and gin, calls one
library function, prints, and returns an exit status.

May import anything in jaxmerge; nothing outside this package imports it (benchmarks and
tests aside): the library never parses flags.
"""
