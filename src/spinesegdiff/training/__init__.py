"""Training: configuration, the loop, losses, validation and checkpoints."""
