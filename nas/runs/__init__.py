"""A run's results read back: the run folder and its trials table, its fronts and plots, the retrained
models' seed statistics, and the architectures of its trials.
"""
