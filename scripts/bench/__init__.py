"""scripts/benchmark.py's sections, one module per group (the driver prints the tables and writes the JSON)."""
