"""Downstream use of the encoders: HEAR API, probes, fine-tuning, evaluation."""
