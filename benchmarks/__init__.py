"""Figure-printing benchmarks (`python -m benchmarks.<name>`)."""
