"""Evaluation of trajectories: the metrics that judge a k-step integrator against its baselines.

``jkstep.evaluate.metrics`` holds pure-numpy functions on arrays of frames (positions in Å,
velocities in Å/fs, energies in eV, time in fs, masses in amu): internal coordinates, single-jump
errors, Jensen–Shannon divergences of bond/angle/dihedral distributions, the vibrational spectrum
and its X–H band, torsion flip rates with Poisson intervals, energy drift, temperature,
blow-up detection, RMSD to the start, and plots. A metric that cannot be measured is None.
"""
