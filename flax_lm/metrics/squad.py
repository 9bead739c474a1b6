"""Extractive QA scores exactly as SQuAD v1.1's official evaluate-v1.1.py defines them.

Answers are compared after normalization (lower case, no punctuation, no articles, single
spaces). Exact match and token-overlap F1 take the best over a question's reference answers,
then average over questions, in percent.
"""

import re
import string
from collections import Counter

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower-cases, drops ASCII punctuation, drops the whole words a/an/the and collapses whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall, tokens counted with multiplicity."""
    pred_tokens, ref_tokens = normalize_answer(prediction).split(), normalize_answer(reference).split()
    n_same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if n_same == 0:
        return 0.0
    precision, recall = n_same / len(pred_tokens), n_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """`exact_match` and `f1`, in percent (0-100), of answer texts by question id.

    Every question in `references` (id -> its acceptable answers, at least one) counts; one
    missing from `predictions` scores 0. Predictions for ids not in `references` are ignored.
    """
    if not references:
        raise ValueError("no reference questions to score")
    total_em = total_f1 = 0.0
    for qid, answers in references.items():
        if not answers:
            raise ValueError(f"question {qid!r} has no reference answers")
        if qid not in predictions:
            continue
        prediction = predictions[qid]
        total_em += max(_exact_match(prediction, a) for a in answers)
        total_f1 += max(_f1(prediction, a) for a in answers)
    return {"exact_match": 100.0 * total_em / len(references), "f1": 100.0 * total_f1 / len(references)}
