"""dreamctl: train and evaluate diffusion models with DREAM-style training."""

__version__ = "0.1.0"
