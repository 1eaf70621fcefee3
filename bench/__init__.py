"""The benchmark suite of the runner: `python -m bench` from the repository's root.

It starts a PostgreSQL of its own (or uses DATABASE_URL), measures the runner, and
the peers side by side, and writes a table, JSON and a plot into bench/results/.
"""
