"""Scores of generated text against references: BLEU and chrF (sacrebleu), ROUGE (rouge-score).

Corpus-level, on detokenized text, as papers report them: sacrebleu's default 13a tokenization
for BLEU, chrF with character 6-grams, ROUGE-1/2/L F-measures with stemming, averaged over
examples (the way the rouge-score package and the summarization literature report them).
Scores are on a 0-100 scale.
"""

from flax_lm.errors import UserError


def generated_text_metrics(names: list[str], hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """{metric: score} for each of `names` ("bleu", "chrf", "rouge") over aligned lists of strings."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    scores = {}
    for name in names:
        scores.update(_SCORERS[name](hypotheses, references))
    return scores


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise UserError("BLEU and chrF need sacrebleu: pip install 'flax_lm[seq2seq]'") from None
    return sacrebleu


def _bleu(hypotheses, references):
    return {"bleu": float(_sacrebleu().corpus_bleu(hypotheses, [references]).score)}


def _chrf(hypotheses, references):
    return {"chrf": float(_sacrebleu().corpus_chrf(hypotheses, [references]).score)}


def _rouge(hypotheses, references):
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise UserError("ROUGE needs rouge-score: pip install 'flax_lm[seq2seq]'") from None
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for hypothesis, reference in zip(hypotheses, references):
        for kind, score in scorer.score(reference, hypothesis).items():
            totals[kind] += score.fmeasure
    return {kind: 100.0 * total / max(len(hypotheses), 1) for kind, total in totals.items()}


_SCORERS = {"bleu": _bleu, "chrf": _chrf, "rouge": _rouge}
