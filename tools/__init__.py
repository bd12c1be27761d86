"""Developer tools: benchmarks (tools/bench)."""
