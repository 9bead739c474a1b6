"""Text sources, tokenization, packing and deterministic batching."""
