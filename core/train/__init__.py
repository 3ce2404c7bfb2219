"""What every training stage shares: the run pipeline, trainer setup, logs and plots."""
