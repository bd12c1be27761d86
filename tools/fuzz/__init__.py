"""Long fuzzing campaigns: `python -m tools.fuzz [NAME...] [--ops N]` (see __main__)."""
