"""SPIDER data: reading scans, preprocessing to the model grid and back, labels, splits, the slice cache."""
