"""Text generation: key/value-cache decoding with greedy, sampling and beam search."""

from flax_lm.generation.decoder import CausalDecoder, Prepared, Seq2SeqDecoder, for_model
from flax_lm.generation.generate import generate
from flax_lm.generation.settings import GenerationConfig

__all__ = ["CausalDecoder", "GenerationConfig", "Prepared", "Seq2SeqDecoder", "for_model", "generate"]
