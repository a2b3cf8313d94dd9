"""minift.metrics against the references: scikit-learn for classification, seqeval for entities.

Every expected number comes from the reference on random inputs; the tolerance is 1e-12 because
both sides do the same float64 divisions and sums, in a different order (a few ulps at most).
"""

import math
import random
import warnings

import numpy as np
import pytest
import torch
from seqeval.metrics import classification_report as seqeval_report
from seqeval.metrics.sequence_labeling import get_entities
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.metrics import classification_report as sklearn_report

from minift.metrics import (
    T_975,
    accuracy,
    classification_report,
    entity_report,
    extract_entities,
    format_report,
    macro_f1,
    precision_recall_fscore,
    seed_summary,
    token_report,
)

TOL = 1e-12  # float64 ratios of integer counts, summed in another order: equal to a few ulps
NAMES = ["neg", "neutral", "pos", "very neg", "very pos", "Zeta", "alpha", "b", "c", "d"]
TYPES = ["PER", "LOC", "creative-work"]
# Every prefix seqeval's default mode interprets (B, I, E, S, bare B/I), so ill-formed sequences
# (I- after O, I-LOC after B-PER, E- without B-, S- inside an entity) come up all the time.
TAGS = ["O"] * 6 + [f"{p}-{t}" for p in "BIES" for t in TYPES] + ["B", "I"]


def quiet(fn, *args, **kwargs):
    """The references warn (UndefinedMetricWarning) where a ratio is 0/0; the value is what counts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def assert_same_report(ours: dict, ref: dict, f1_key: str = "f1-score") -> None:
    """Same rows in the same order, every number within TOL (NaN where the reference has NaN)."""
    assert list(ours) == list(ref)
    for name, ref_row in ref.items():
        if not isinstance(ref_row, dict):  # "accuracy" is a bare number
            assert abs(ours[name] - ref_row) <= TOL, name
            continue
        assert list(ours[name]) == ["precision", "recall", f1_key, "support"]
        assert ours[name]["support"] == ref_row["support"] and isinstance(ours[name]["support"], int)
        for ours_key, ref_key in (("precision", "precision"), ("recall", "recall"), (f1_key, "f1-score")):
            a, b = ours[name][ours_key], ref_row[ref_key]
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL, (name, ours_key, a, b)


def random_labels(rng: random.Random, strings: bool):
    """y_true, y_pred over k classes; predictions often miss classes (a collapsed classifier)."""
    k = rng.choice([1, 2, 3, 5, 10])
    n = rng.randint(1, 60)
    classes = NAMES[:k] if strings else list(range(k))
    y_true = [rng.choice(classes) for _ in range(n)]
    predicted = rng.sample(classes, rng.randint(1, k))
    y_pred = [t if rng.random() < 0.4 else rng.choice(predicted) for t in y_true]
    return classes, y_true, y_pred


# --- classification -------------------------------------------------------------------------------


def test_per_class_scores_match_sklearn_on_thousands_of_vectors():
    """3000 random problems in one reference call: problem j's classes are renamed "j/c", so no two
    problems share a class and each class's counts (hence its P, R, F1, support) come only from its
    own problem. One sklearn call over the concatenation scores every class of every problem; a call
    per problem would cost ~15 ms of input validation each."""
    rng = random.Random(0)
    problems = [random_labels(rng, strings=j % 2 == 0) for j in range(3000)]
    all_true = [f"{j}/{t}" for j, (_, y_true, _) in enumerate(problems) for t in y_true]
    all_pred = [f"{j}/{p}" for j, (_, _, y_pred) in enumerate(problems) for p in y_pred]
    all_labels = [f"{j}/{c}" for j, (classes, _, _) in enumerate(problems) for c in classes]
    p, r, f, s = quiet(precision_recall_fscore_support, all_true, all_pred, labels=all_labels, average=None)
    ref = {name: row for name, *row in zip(all_labels, p, r, f, s)}
    worst = 0.0
    for j, (classes, y_true, y_pred) in enumerate(problems):
        ours = precision_recall_fscore(y_true, y_pred, labels=classes)
        report = classification_report(y_true, y_pred, labels=classes)
        for c in classes:
            ref_p, ref_r, ref_f, ref_s = ref[f"{j}/{c}"]
            assert ours[c]["support"] == report[str(c)]["support"] == ref_s
            assert (ours[c]["precision"], ours[c]["recall"], ours[c]["f1"]) == tuple(
                report[str(c)][k] for k in ("precision", "recall", "f1-score"))
            worst = max(worst, abs(ours[c]["precision"] - ref_p), abs(ours[c]["recall"] - ref_r),
                        abs(ours[c]["f1"] - ref_f))
    assert worst <= TOL, worst


@pytest.mark.parametrize("seed", range(2))
def test_classification_report_matches_sklearn(seed):
    """The whole report, averages included, one reference call per random vector."""
    rng = random.Random(seed)
    for case in range(60):
        classes, y_true, y_pred = random_labels(rng, strings=case % 2 == 0)
        assert_same_report(classification_report(y_true, y_pred),
                           quiet(sklearn_report, y_true, y_pred, output_dict=True))
        if case % 5 == 0:
            # all classes (some never seen: zero support) -> "accuracy"; a strict subset -> "micro avg"
            labels = classes + (["unseen"] if isinstance(classes[0], str) else [99])
            names = [f"class {c}" for c in labels]
            assert_same_report(classification_report(y_true, y_pred, names, labels=labels),
                               quiet(sklearn_report, y_true, y_pred, labels=labels, target_names=names,
                                     output_dict=True))
            subset = rng.sample(labels, rng.randint(1, len(labels)))
            assert_same_report(classification_report(y_true, y_pred, labels=subset),
                               quiet(sklearn_report, y_true, y_pred, labels=subset, output_dict=True))
    # no label of the report in y_true: zero total support, the weighted average is 0
    assert_same_report(classification_report(["a", "b"], ["a", "c"], labels=["c", "d"]),
                       quiet(sklearn_report, ["a", "b"], ["a", "c"], labels=["c", "d"], output_dict=True))


def test_scores_match_sklearn():
    rng = random.Random(10)
    for case in range(60):
        _, y_true, y_pred = random_labels(rng, strings=case % 2 == 1)
        assert abs(accuracy(y_true, y_pred) - accuracy_score(y_true, y_pred)) <= TOL
        assert abs(macro_f1(y_true, y_pred) - quiet(f1_score, y_true, y_pred, average="macro")) <= TOL


def test_tensors_and_numpy_arrays_are_labels():
    rng = random.Random(3)
    _, y_true, y_pred = random_labels(rng, strings=False)
    ref = quiet(sklearn_report, y_true, y_pred, output_dict=True)
    assert_same_report(classification_report(torch.tensor(y_true), np.array(y_pred)), ref)
    assert_same_report(classification_report(list(np.array(y_true)), y_pred), ref)  # numpy.int64 items
    words = [f"w{t}" for t in y_true]
    assert_same_report(classification_report(list(np.array(words)), words),  # numpy.str_ items
                       quiet(sklearn_report, words, words, output_dict=True))


@pytest.mark.parametrize("digits", [2, 4])
def test_format_report_prints_sklearns_table(digits):
    rng = random.Random(digits)
    for case in range(10):
        classes, y_true, y_pred = random_labels(rng, strings=True)
        if len(y_true) == 1:
            continue  # sklearn prints the supports of a one-sample report as floats ("1.0"); ours are ints
        ours = classification_report(y_true, y_pred, digits=digits)
        assert str(ours) == format_report(ours) == quiet(sklearn_report, y_true, y_pred, digits=digits)
        subset = classes[:1]
        assert format_report(classification_report(y_true, y_pred, labels=subset), digits) == quiet(
            sklearn_report, y_true, y_pred, labels=subset, digits=digits)


def test_classification_errors():
    with pytest.raises(ValueError, match="y_true has 3 labels but y_pred has 2"):
        accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="empty"):
        classification_report([], [])
    with pytest.raises(ValueError, match=r"mix label types \['int', 'str'\]"):
        macro_f1([0, 1], ["0", "1"])
    with pytest.raises(ValueError, match=r"y_pred\[1\] = 0.7: labels must be int or str, found float"):
        accuracy([0, 1], [0, 0.7])
    with pytest.raises(ValueError, match="3 target_names for 2 classes"):
        classification_report(["a", "b"], ["a", "a"], target_names=["x", "y", "z"])
    with pytest.raises(ValueError, match="more than once"):
        precision_recall_fscore(["a"], ["a"], labels=["a", "a"])


# --- entities ---------------------------------------------------------------------------------------


def random_tags(rng: random.Random, length: int) -> list[str]:
    return [rng.choice(TAGS) for _ in range(length)]


def noisy_copy(rng: random.Random, tags: list[str]) -> list[str]:
    """A prediction close to the truth (so entities often match) with some tags replaced."""
    return [t if rng.random() < 0.7 else rng.choice(TAGS) for t in tags]


def test_extract_entities_matches_seqeval():
    rng = random.Random(0)
    for _ in range(3000):
        tags = random_tags(rng, rng.randint(0, 15))
        assert extract_entities(tags) == quiet(get_entities, tags), tags


@pytest.mark.parametrize("seed", range(4))
def test_entity_report_matches_seqeval(seed):
    rng = random.Random(100 + seed)
    for _ in range(300):  # 1200 random corpora of 1-5 sentences over the 4 seeds
        y_true = [random_tags(rng, rng.randint(0, 12)) for _ in range(rng.randint(1, 5))]
        y_pred = [noisy_copy(rng, s) if rng.random() < 0.7 else random_tags(rng, len(s)) for s in y_true]
        ours = entity_report(y_true, y_pred)
        assert_same_report(ours, quiet(seqeval_report, y_true, y_pred, output_dict=True), f1_key="f1")
        if len(ours) > 3 and rng.random() < 0.1:  # seqeval cannot print a table without entities
            assert str(ours) == quiet(seqeval_report, y_true, y_pred, digits=4)


@pytest.mark.parametrize("y_true, y_pred", [
    ([["O", "O"]], [["O", "O"]]),  # no entity anywhere: macro avg is NaN in seqeval
    ([[], ["O"]], [[], ["O"]]),  # empty sentences
    ([["O", "O"]], [["B-PER", "O"]]),  # only false positives: weighted avg over zero support
    ([["B-PER"], []], [["B-LOC"], []]),
])
def test_entity_report_corner_cases(y_true, y_pred):
    assert_same_report(entity_report(y_true, y_pred), quiet(seqeval_report, y_true, y_pred, output_dict=True),
                       f1_key="f1")


def test_token_report_is_the_report_of_flattened_tags():
    rng = random.Random(5)
    for _ in range(20):
        y_true = [random_tags(rng, rng.randint(1, 10)) for _ in range(3)]
        y_pred = [noisy_copy(rng, s) for s in y_true]
        flat = quiet(sklearn_report, sum(y_true, []), sum(y_pred, []), output_dict=True)
        assert_same_report(token_report(y_true, y_pred), flat)


def test_entity_errors():
    with pytest.raises(ValueError, match=r"y_pred\[1\]\[2\] = 'PER' is not a BIO tag"):
        entity_report([["O"], ["O", "O", "O"]], [["O"], ["O", "O", "PER"]])
    with pytest.raises(ValueError, match=r"tags\[0\] = 'b-per' is not a BIO tag"):
        extract_entities(["b-per"])
    with pytest.raises(ValueError, match=r"y_true\[0\] has 2 tags but y_pred\[0\] has 1"):
        entity_report([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="y_true has 2 sentences but y_pred has 1"):
        entity_report([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="not a flat list of tags"):
        entity_report(["B-PER", "O"], ["B-PER", "O"])
    with pytest.raises(ValueError, match="no sentences"):
        entity_report([], [])
    with pytest.raises(ValueError, match="expected a sequence of tags"):
        extract_entities("B-PER")


# --- seed_summary: mean ± std over seeds (lesson 13) --------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_seed_summary_matches_numpy_statistics_and_scipy(seed):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    for n in range(2, len(T_975) + 2):
        values = rng.normal(0.8, 0.05, size=n).tolist()
        s = seed_summary(values)
        assert s.n == n
        assert s.mean == pytest.approx(np.mean(values), abs=TOL)
        assert s.std == pytest.approx(np.std(values, ddof=1), abs=TOL)  # sample std: divisor n - 1
        assert s.sem == pytest.approx(scipy_stats.sem(values), abs=TOL)
        low, high = scipy_stats.t.interval(0.95, n - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
        # T_975 holds t to 4 decimals: the interval's ends move by at most 5e-5 * SE
        assert (s.low, s.high) == pytest.approx((low, high), abs=5e-5 * s.sem + TOL)


def test_t_quantiles_are_scipys():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df, t in enumerate(T_975, 1):
        assert t == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=5e-5), df


def test_seed_summary_prints_mean_std_and_n_and_refuses_one_run():
    s = seed_summary([0.90, 0.91, 0.93])
    assert str(s) == "0.913 ± 0.015 (n=3)"
    assert s.format(digits=4) == "0.9133 ± 0.0153 (n=3)"
    assert seed_summary(torch.tensor([1.0, 3.0])).std == pytest.approx(math.sqrt(2), abs=TOL)
    for values in ([0.9], [], [0.5] * (len(T_975) + 2)):
        with pytest.raises(ValueError, match=f"got {len(values)}"):
            seed_summary(values)
