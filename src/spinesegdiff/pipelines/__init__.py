"""Inference pipelines: the multi-sample DDIM sampler, the segmenter, presegmenters, runtimes and predict."""
