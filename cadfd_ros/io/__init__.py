"""File input/output: captures, result files, point clouds."""
