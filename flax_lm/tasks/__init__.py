"""Tasks: each contributes a loss (and its metrics); the loop and step are shared."""

from flax_lm.tasks.base import Task
from flax_lm.tasks.causal_lm import CausalLM
from flax_lm.tasks.classification import SequenceClassification
from flax_lm.tasks.embedding import SentenceEmbedding
from flax_lm.tasks.masked_lm import MaskedLM
from flax_lm.tasks.question_answering import QuestionAnswering
from flax_lm.tasks.seq2seq import Seq2SeqLM
from flax_lm.tasks.token_classification import TokenClassification

__all__ = ["CausalLM", "MaskedLM", "QuestionAnswering", "Seq2SeqLM", "SentenceEmbedding", "SequenceClassification",
           "Task", "TokenClassification", "get_task"]


def get_task(cfg, label_names: list[str] | None = None) -> Task:
    """The task a run config names, with its settings; classification tasks need the label
    (or tag) names of their data."""
    if cfg.task == "causal_lm":
        return CausalLM(cfg.train.loss_chunk_len, cfg.train.label_smoothing)
    if cfg.task in ("seq2seq", "span_corruption"):
        return Seq2SeqLM(cfg.train.loss_chunk_len, cfg.train.label_smoothing)
    if cfg.task == "masked_lm":
        return MaskedLM(nsp=cfg.data.nsp)
    if cfg.task == "classification":
        return SequenceClassification(label_names)
    if cfg.task == "token_classification":
        return TokenClassification(label_names)
    if cfg.task == "question_answering":
        return QuestionAnswering()
    if cfg.task == "embedding":
        return SentenceEmbedding()
    raise ValueError(f"unknown task {cfg.task!r}")
