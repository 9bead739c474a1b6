"""Tasks: each contributes a loss (and its metrics); the loop and step are shared."""

from flax_lm.tasks.base import Inference, Task
from flax_lm.tasks.bidirectional_lm import BidirectionalLM
from flax_lm.tasks.causal_lm import CausalLM
from flax_lm.tasks.classification import SequenceClassification
from flax_lm.tasks.embedding import SentenceEmbedding
from flax_lm.tasks.masked_lm import MaskedLM
from flax_lm.tasks.question_answering import QuestionAnswering
from flax_lm.tasks.seq2seq import Seq2SeqLM, SpanCorruption
from flax_lm.tasks.token_classification import TokenClassification

__all__ = ["TASKS", "BidirectionalLM", "CausalLM", "Inference", "MaskedLM", "QuestionAnswering", "Seq2SeqLM",
           "SentenceEmbedding", "SequenceClassification", "SpanCorruption", "Task", "TokenClassification", "get_task"]

TASKS = {"causal_lm": CausalLM, "masked_lm": MaskedLM, "classification": SequenceClassification,
         "token_classification": TokenClassification, "question_answering": QuestionAnswering,
         "seq2seq": Seq2SeqLM, "span_corruption": SpanCorruption, "embedding": SentenceEmbedding}  # config's task -> its class


def get_task(cfg, label_names: list[str] | None = None) -> Task:
    """The task a run config names, with its settings. Classification tasks take the label (or
    tag) names of their data; without them (no data read) `model.num_labels` says whether a
    classification is a regression."""
    if cfg.task not in TASKS:
        raise ValueError(f"unknown task {cfg.task!r}")
    kind = TASKS[cfg.task]
    if kind is CausalLM and cfg.model.family == "elmo":   # ELMo's LM runs both ways over the same batches
        kind = BidirectionalLM
    if kind in (CausalLM, BidirectionalLM, Seq2SeqLM, SpanCorruption):
        return kind(cfg.train.loss_chunk_len, cfg.train.label_smoothing)
    if kind is MaskedLM:
        return MaskedLM(nsp=cfg.data.nsp)
    if kind is SequenceClassification:
        return SequenceClassification(label_names, None if label_names is not None else cfg.model.num_labels == 1)
    if kind is TokenClassification:
        return TokenClassification(label_names)
    if kind is SentenceEmbedding:
        return SentenceEmbedding()
    return QuestionAnswering()
