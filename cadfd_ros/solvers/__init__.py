"""Solvers: the classical Levin-style baseline and the diffusion posterior sampler."""
