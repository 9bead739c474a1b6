"""A TFDS data set built from the shared Tiny Shakespeare file (see its builder)."""
