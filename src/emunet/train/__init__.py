"""Training: augmentation, batches, losses, the loop, validation and its log."""
