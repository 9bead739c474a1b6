"""A run's work directory and what lives in it: the Run, checkpoints, best, resume checks."""
