"""Device runtimes, checkpoints, logging and metrics."""
