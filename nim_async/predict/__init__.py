"""Inference: the async predictor, its stream, media preparation, batches and their journal."""
