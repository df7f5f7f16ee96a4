"""Benchmarks (the README lists them with their targets). Each module runs as
``python -m bench.<name>`` (root where it loads XDP), prints a Markdown table and
writes it, with the raw numbers as JSON, to ``bench/results/``. Speed is measured
here, reproducibly, and never asserted in tests."""
