"""Training: the record format, data loading and augmentation, caching, and the adapter training script."""
