"""The conversion pipeline: one sequence of passes for every source format (see ``contraction``)."""
