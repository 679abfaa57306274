"""Windows, tagging, events and embeddings on top of the encoder."""
