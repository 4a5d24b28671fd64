"""Training: targets, losses, loop, metrics, evaluation reports, packaging."""
