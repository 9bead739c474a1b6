"""Metrics against their references: sklearn and scipy (classification, regression), seqeval on the
real CoNLL-2003 dev tags (entities), and hand-computed SQuAD v1.1 cases."""

import warnings

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from conftest import SHARED_DATA

from flax_lm.metrics import (
    classification_metrics,
    entity_metrics,
    get_entities,
    normalize_answer,
    regression_metrics,
    squad_metrics,
)

CONLL_DEV = SHARED_DATA / "conll2003" / "dev.txt"


# --- classification and regression -----------------------------------------------------------------

def _check_against_sklearn(pred, label, names):
    got = classification_metrics(pred, label, names)
    k = len(names)
    p, r, f, s = sklearn.metrics.precision_recall_fscore_support(label, pred, labels=range(k), zero_division=0)
    macro = sklearn.metrics.precision_recall_fscore_support(label, pred, labels=range(k), average="macro",
                                                            zero_division=0)
    want = {"accuracy": sklearn.metrics.accuracy_score(label, pred),
            "mcc": sklearn.metrics.matthews_corrcoef(label, pred),
            "macro_precision": macro[0], "macro_recall": macro[1], "macro_f1": macro[2]}
    for i, name in enumerate(names):
        want.update({f"precision/{name}": p[i], f"recall/{name}": r[i], f"f1/{name}": f[i], f"support/{name}": s[i]})
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9, rel=0), key
        assert isinstance(got[key], float), key


@pytest.mark.parametrize("seed", range(6))
def test_classification_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    n = int(rng.integers(5, 300))
    names = [f"class{i}" for i in range(k)]
    # Skewed class probabilities so that some classes go missing from labels, predictions or both.
    label = rng.choice(k, n, p=rng.dirichlet(np.full(k, 0.3)))
    pred = np.where(rng.random(n) < 0.6, label, rng.choice(k, n, p=rng.dirichlet(np.full(k, 0.3))))
    _check_against_sklearn(pred, label, names)


def test_classification_edge_cases():
    names = ["neg", "neu", "pos"]
    _check_against_sklearn(np.array([2, 2, 2, 2]), np.array([0, 2, 2, 0]), names)  # constant prediction: MCC 0
    _check_against_sklearn(np.array([1, 0, 1]), np.array([1, 0, 1]), names)        # perfect, one class absent
    _check_against_sklearn(np.array([1, 0]), np.array([0, 1]), ["a", "b"])         # all wrong: MCC -1
    got = classification_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]), names)
    assert got["mcc"] == pytest.approx(0.5)
    assert (got["precision/pos"], got["recall/pos"], got["f1/pos"], got["support/pos"]) == (0, 0, 0, 0)
    assert got["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)  # neg: P 1/2 R 1; neu: P 1 R 1/2
    with pytest.raises(ValueError, match="outside"):
        classification_metrics(np.array([0, 3]), np.array([0, 1]), names)
    with pytest.raises(ValueError, match="1-D"):
        classification_metrics(np.array([0, 1]), np.array([0, 1, 1]), names)


@pytest.mark.parametrize("seed", range(4))
def test_regression_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 200))
    label = rng.integers(0, 6, n) / 5 * 5  # STS-B-like scores on a coarse grid: many ties
    pred = label + rng.normal(0, 1.5, n)
    if seed % 2:
        pred = np.round(pred)  # ties on the prediction side too
    got = regression_metrics(pred, label)
    assert got["pearson"] == pytest.approx(scipy.stats.pearsonr(pred, label)[0], abs=1e-9, rel=0)
    assert got["spearman"] == pytest.approx(scipy.stats.spearmanr(pred, label)[0], abs=1e-9, rel=0)
    assert got["mse"] == pytest.approx(sklearn.metrics.mean_squared_error(label, pred), abs=1e-9, rel=0)


def test_regression_constant_side_is_nan_like_scipy():
    got = regression_metrics(np.array([1.0, 1.0, 1.0]), np.array([0.0, 1.0, 2.0]))
    assert np.isnan(got["pearson"]) and np.isnan(got["spearman"])
    assert got["mse"] == pytest.approx(2 / 3)


# --- named entities --------------------------------------------------------------------------------

def test_get_entities_chunk_rules():
    assert get_entities([]) == []
    assert get_entities(["O", "O"]) == []
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["I-PER", "I-PER", "O"]) == [("PER", 0, 1)]                   # IOB1: I- after O starts
    assert get_entities(["B-PER", "I-LOC", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2)]  # type change starts
    assert get_entities(["B-ORG", "I-ORG", "B-ORG"]) == [("ORG", 0, 1), ("ORG", 2, 2)]  # B- ends the previous
    assert get_entities(["O", "I-MISC", "B-MISC", "I-MISC"]) == [("MISC", 1, 1), ("MISC", 2, 3)]
    assert get_entities(["B-PER", "I-PER"]) == [("PER", 0, 1)]                        # runs to the end
    assert get_entities(["S-LOC", "B-PER", "E-PER", "I-PER"]) == [("LOC", 0, 0), ("PER", 1, 2), ("PER", 3, 3)]


def test_entity_metrics_hand_computed():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-PER", "I-PER"]]
    got = entity_metrics(true, pred)
    # Entities: true PER(0,0-1) LOC(0,3) PER(1,1); predicted PER(0,0-1) ORG(0,3) PER(1,0-1). One match.
    assert (got["precision"], got["recall"]) == (1 / 3, 1 / 3)
    assert got["f1"] == pytest.approx(1 / 3)
    assert got["token_accuracy"] == 3 / 6
    assert (got["precision/PER"], got["recall/PER"], got["support/PER"]) == (0.5, 0.5, 2.0)
    assert (got["precision/LOC"], got["recall/LOC"], got["f1/LOC"], got["support/LOC"]) == (0, 0, 0, 1.0)
    assert (got["precision/ORG"], got["recall/ORG"], got["f1/ORG"], got["support/ORG"]) == (0, 0, 0, 0.0)
    # An entity does not continue across a sentence boundary.
    split = entity_metrics([["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["I-PER", "O"]])
    assert split["support/PER"] == 2.0 and split["f1"] == 1.0
    none = entity_metrics([["O"]], [["O"]])
    assert (none["precision"], none["recall"], none["f1"], none["token_accuracy"]) == (0, 0, 0, 1)
    with pytest.raises(ValueError, match="sentence 1"):
        entity_metrics([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="sentences"):
        entity_metrics([["O"]], [])


def _read_conll_tags(path):
    """Tag sequences of a CoNLL file: tag in the last column, sentences split by blank and -DOCSTART- lines."""
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if current:
                sentences.append(current)
            current = []
        else:
            current.append(line.split()[-1])
    if current:
        sentences.append(current)
    return sentences


def _corrupt(sentences, rate, rng):
    """The kinds of mistakes a tagger makes, plus IOBES and bare tags that conlleval's rules also handle."""
    types = ["PER", "ORG", "LOC", "MISC"]
    out = []
    for tags in sentences:
        new = list(tags)
        for i, tag in enumerate(tags):
            if rng.random() >= rate:
                continue
            kind = rng.integers(8)
            other = types[rng.integers(len(types))]
            if kind == 0 and tag != "O":
                new[i] = tag[:2] + other                      # swap the type
            elif kind == 1 and tag.startswith("B-"):
                new[i] = "I-" + tag[2:]                       # drop the B-
            elif kind == 2 and tag == "O":
                new[i] = "I-" + other                         # I- after O (or inside)
            elif kind == 3:
                new[i] = "O"                                  # miss a token
            elif kind == 4 and tag.startswith("I-"):
                new[i] = "B-" + tag[2:]                       # split an entity
            elif kind == 5:
                new[i] = "B-" + other                         # spurious start
            elif kind == 6:
                new[i] = ("E-", "S-")[rng.integers(2)] + other
            elif kind == 7:
                new[i] = ("B", "I")[rng.integers(2)]          # a tag without type ('_' to seqeval)
        out.append(new)
    return out


@pytest.mark.parametrize("seed,rate", [(0, 0.0), (1, 0.02), (2, 0.1), (3, 0.3)])
def test_entity_metrics_match_seqeval_on_conll_dev(seed, rate):
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    if not CONLL_DEV.is_file():
        pytest.skip(f"shared data not found at {CONLL_DEV}")
    true = _read_conll_tags(CONLL_DEV)
    assert len(true) == 3250
    pred = _corrupt(true, rate, np.random.default_rng(seed))
    got = entity_metrics(true, pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about typeless tags and zero divisions
        report = seqeval_metrics.classification_report(true, pred, output_dict=True, zero_division=0)
        want = {"precision": seqeval_metrics.precision_score(true, pred),
                "recall": seqeval_metrics.recall_score(true, pred),
                "f1": seqeval_metrics.f1_score(true, pred),
                "token_accuracy": seqeval_metrics.accuracy_score(true, pred)}
    for type_, row in report.items():
        if not type_.endswith(" avg"):
            want.update({f"precision/{type_}": row["precision"], f"recall/{type_}": row["recall"],
                         f"f1/{type_}": row["f1-score"], f"support/{type_}": row["support"]})
    assert report["micro avg"]["f1-score"] == pytest.approx(want["f1"], abs=1e-12)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12, rel=0), key
    if rate == 0:
        assert got["f1"] == 1.0 and got["support/PER"] == 1842  # CoNLL-2003 dev: 1,842 PER entities


# --- SQuAD v1.1 ------------------------------------------------------------------------------------

def test_normalize_answer():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an anthem for a theatre") == "anthem for theatre"  # whole words only
    assert normalize_answer("A-team") == "ateam"  # punctuation goes before articles do
    assert normalize_answer("  THE ") == ""
    assert normalize_answer("naïve café") == "naïve café"


def test_squad_metrics_hand_computed():
    references = {
        "q1": ["Eiffel Tower"],
        "q2": ["Denver Broncos", "the Broncos"],
        "q3": ["cat cat dog"],
        "q4": ["Santa Clara"],
        "q5": ["The"],
        "q6": ["Levi's Stadium"],
    }
    predictions = {
        "q1": "the Eiffel Tower.",        # EM 1, F1 1
        "q2": "Denver Broncos won",       # vs 'denver broncos': P 2/3 R 1 -> 0.8; vs 'broncos': P 1/3 R 1 -> 0.5
        "q3": "the the cat cat cat",      # 'cat cat cat' vs 'cat cat dog': overlap 2, P = R = 2/3
        "q4": "",                         # empty prediction: 0
        "q5": "a",                        # both normalize to '': EM 1 but F1 0 (no common token)
        "extra": "ignored",               # not a reference question
    }                                     # q6 missing: 0
    got = squad_metrics(predictions, references)
    assert got["exact_match"] == pytest.approx(100 * 2 / 6)
    assert got["f1"] == pytest.approx(100 * (1 + 0.8 + 2 / 3 + 0 + 0 + 0) / 6)
    assert squad_metrics({"q": "Broncos"}, {"q": ["Denver Broncos", "the Broncos"]}) == {"exact_match": 100.0,
                                                                                        "f1": 100.0}
    with pytest.raises(ValueError, match="no reference answers"):
        squad_metrics({"q": "x"}, {"q": []})


def test_generated_text_metrics_on_hand_checked_cases():
    from flax_lm.metrics import generated_text_metrics
    refs = ["the cat sat on the mat", "a dog runs in the park"]
    same = generated_text_metrics(["bleu", "chrf", "rouge"], refs, refs)
    assert same == pytest.approx({"bleu": 100.0, "chrf": 100.0, "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    nothing = generated_text_metrics(["bleu", "rouge"], ["", ""], refs)
    assert nothing["bleu"] == 0.0 and nothing["rouge1"] == 0.0
    # one of two sentences right, the other with no word in common: ROUGE-1 averages 100 and 0
    half = generated_text_metrics(["rouge"], [refs[0], "zebra"], refs)
    assert half["rouge1"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        generated_text_metrics(["bleu"], refs, refs[:1])
