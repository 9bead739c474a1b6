"""Entity-level precision, recall and F1 for tagged sequences, as conlleval.pl and seqeval score them.

An entity is a maximal chunk of tags of one type, found with conlleval's chunk rules
(seqeval's default, `mode=None`), which accept BIO (IOB2), IOB1 and IOBES tags: a chunk
starts at B-/S-, at an I-/E- after O or after another type, and ends before a B-/S-/O,
before another type and after E-/S-. A predicted entity counts only when its type, start
and end all match a true one.
"""

from collections import Counter


def _prefix_and_type(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '_'). seqeval's parsing: first character, then after the first '-'."""
    return tag[:1], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _chunk_ends(prev_prefix: str, prefix: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk ended between the previous tag and this one."""
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    # '.' is conlleval's no-chunk marker, like O.
    return prev_prefix not in ("O", ".") and prev_type != type_


def _chunk_starts(prev_prefix: str, prefix: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk started at this tag."""
    if prefix in ("B", "S"):
        return True
    if prev_prefix in ("E", "S", "O") and prefix in ("E", "I"):
        return True
    return prefix not in ("O", ".") and prev_type != type_


def get_entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """The entities in one sentence's tags (T,), as (type, start, end) with token positions, end inclusive.

    get_entities(['B-PER', 'I-PER', 'O', 'I-LOC']) == [('PER', 0, 1), ('LOC', 3, 3)].
    """
    entities = []
    prev_prefix, prev_type, start = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):  # the trailing O closes a chunk that runs to the end
        prefix, type_ = _prefix_and_type(tag)
        if _chunk_ends(prev_prefix, prefix, prev_type, type_):
            entities.append((prev_type, start, i - 1))
        if _chunk_starts(prev_prefix, prefix, prev_type, type_):
            start = i
        prev_prefix, prev_type = prefix, type_
    return entities


def _divide(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def entity_metrics(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict[str, float]:
    """Entity-level scores of predicted tag sequences against true ones (S sentences, each T_s tags).

    Returns floats in [0, 1]: `precision`, `recall`, `f1` (micro, over all entities),
    `token_accuracy` (tags equal, over all tokens), and for every entity type seen in either
    side `precision/<TYPE>`, `recall/<TYPE>`, `f1/<TYPE>` and `support/<TYPE>` (the count of
    true entities). Zero divisions score 0.
    """
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} true sentences but {len(pred_tags)} predicted ones")
    true_by_type, pred_by_type, correct_by_type = Counter(), Counter(), Counter()
    n_tokens = n_equal = 0
    for s, (true_T, pred_T) in enumerate(zip(true_tags, pred_tags)):
        if len(true_T) != len(pred_T):
            raise ValueError(f"sentence {s}: {len(true_T)} true tags but {len(pred_T)} predicted ones")
        n_tokens += len(true_T)
        n_equal += sum(t == p for t, p in zip(true_T, pred_T))
        true_entities, pred_entities = set(get_entities(true_T)), set(get_entities(pred_T))
        true_by_type.update(e[0] for e in true_entities)
        pred_by_type.update(e[0] for e in pred_entities)
        correct_by_type.update(e[0] for e in true_entities & pred_entities)

    n_correct, n_true, n_pred = (sum(c.values()) for c in (correct_by_type, true_by_type, pred_by_type))
    precision, recall = _divide(n_correct, n_pred), _divide(n_correct, n_true)
    out = {"precision": precision, "recall": recall, "f1": _f1(precision, recall),
           "token_accuracy": _divide(n_equal, n_tokens)}
    for type_ in sorted(true_by_type.keys() | pred_by_type.keys()):
        p = _divide(correct_by_type[type_], pred_by_type[type_])
        r = _divide(correct_by_type[type_], true_by_type[type_])
        out[f"precision/{type_}"], out[f"recall/{type_}"], out[f"f1/{type_}"] = p, r, _f1(p, r)
        out[f"support/{type_}"] = float(true_by_type[type_])
    return out
