"""CED encoders, the model registry and checkpoint formats."""
