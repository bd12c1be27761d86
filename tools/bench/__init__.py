"""akvm benchmarks, measured side by side with QEMU in one run: `python -m tools.bench [NAME...]`.

Each benchmark returns rows of (what, akvm figure, other figure, ratio);
figures are medians of several alternating runs because these machines are
noisy. Results are printed as a table and written to tools/bench/results.md.
"""
