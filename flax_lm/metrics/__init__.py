"""Evaluation scores computed on the host from predictions and labels (NumPy and Python, no JAX)."""

from flax_lm.metrics.classification import classification_metrics, regression_metrics
from flax_lm.metrics.generated_text import generated_text_metrics
from flax_lm.metrics.ner import entity_metrics, get_entities
from flax_lm.metrics.squad import normalize_answer, squad_metrics

__all__ = [
    "classification_metrics",
    "entity_metrics",
    "generated_text_metrics",
    "get_entities",
    "normalize_answer",
    "regression_metrics",
    "squad_metrics",
]
