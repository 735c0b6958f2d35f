"""Training: the loop, its state and checkpoints, and the run folder."""
