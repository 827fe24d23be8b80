"""Benchmarks and the load data set-up (make bench, make load)."""

import etax_platform  # noqa: F401 - puts the generated code on sys.path
