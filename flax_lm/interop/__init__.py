"""Weight and config mappings between flax_lm and Hugging Face `transformers`."""
