"""Evaluation metrics: accuracy, per-class precision/recall/F1, reports, entity-level F1 (lesson 11).

Everything is counting. For one class c, with tp = predicted c and truly c, fp = predicted c but not,
fn = truly c but predicted otherwise:

    precision = tp / (tp + fp)      recall = tp / (tp + fn)
    F1 = 2 P R / (P + R) = 2 tp / (2 tp + fp + fn)        (harmonic mean of P and R)

A ratio whose denominator is 0 (no predictions of c, or no true c) is 0 — scikit-learn's and
seqeval's ``zero_division`` default, without their warning. lessons/11-metrics.md derives the
averages (micro, macro, weighted) and the entity-level scores of NER.

`seed_summary` summarises one number measured over several runs that differ only in their seed
(mean, sample standard deviation, standard error, 95% t-interval); lessons/13-evaluation-pitfalls.md
says why a fine-tuning result needs it.

Two reports mirror the references key for key: `classification_report` is
``sklearn.metrics.classification_report(..., output_dict=True)`` (rows with "precision", "recall",
"f1-score", "support") and `entity_report` is ``seqeval.metrics.classification_report(...,
output_dict=True)`` in its default (conlleval) mode, whose rows use the key "f1".
"""

from __future__ import annotations

import math
import numbers
import statistics
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

AVERAGE_ROWS = ("accuracy", "micro avg", "macro avg", "weighted avg")
SKLEARN_KEYS = ("precision", "recall", "f1-score", "support")
ENTITY_KEYS = ("precision", "recall", "f1", "support")
TAG_PREFIXES = ("B", "I", "E", "S")  # Begin, Inside, End, Single; "O" is outside any entity


class Report(dict):
    """A plain dict with the reference's keys and numbers that prints as the familiar table."""

    def __init__(self, digits: int = 4):
        super().__init__()
        self.digits = digits

    def __str__(self) -> str:
        return format_report(self, self.digits)


# --- counting ---------------------------------------------------------------------------------------


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, and 0.0 when the denominator is 0 (zero_division=0)."""
    return numerator / denominator if denominator else 0.0


def _scores(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float, int]:
    """(precision, recall, F1, support) of one class from its three counts.
    F1 as 2tp / (n_pred + n_true): the same number as 2PR/(P+R) and never 0/0 when tp > 0."""
    return _ratio(tp, n_pred), _ratio(tp, n_true), _ratio(2 * tp, n_pred + n_true), n_true


def _micro(counts: Sequence[tuple[int, int, int]]) -> tuple[float, float, float, int]:
    """Micro average: pool the counts of all classes, then score once."""
    tp, n_pred, n_true = (sum(column) for column in zip(*counts)) if counts else (0, 0, 0)
    return _scores(tp, n_pred, n_true)


def _macro(rows: Sequence[tuple[float, float, float, int]]) -> tuple[float, float, float, int]:
    """Macro average: every class counts the same. Over zero classes the mean is undefined (NaN),
    which is what seqeval reports when neither side has a single entity."""
    support = sum(row[3] for row in rows)
    if not rows:
        return math.nan, math.nan, math.nan, support
    return (*(sum(row[k] for row in rows) / len(rows) for k in range(3)), support)


def _weighted(rows: Sequence[tuple[float, float, float, int]]) -> tuple[float, float, float, int]:
    """Average weighted by support (true count). With no support at all every class has tp = 0, so
    every score is 0 and so is any average of them (the references' fallbacks agree on 0)."""
    support = sum(row[3] for row in rows)
    if support == 0:
        return 0.0, 0.0, 0.0, 0
    return (*(sum(row[k] * row[3] for row in rows) / support for k in range(3)), support)


# --- classification -----------------------------------------------------------------------------------


def _as_labels(values: Iterable, name: str) -> list:
    """A flat list of int or str labels from a list, tuple, numpy array or torch tensor."""
    values = values.tolist() if hasattr(values, "tolist") else list(values)
    for i, value in enumerate(values):
        # numpy.int64 / numpy.str_ items (a list of argmax results) become plain int / str
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            values[i] = int(value)
        elif isinstance(value, str):
            values[i] = str(value)
        else:
            raise ValueError(f"{name}[{i}] = {value!r}: labels must be int or str, "
                             f"found {type(value).__name__} (pass one label per example, not scores)")
    return values


def _check_pair(y_true: Iterable, y_pred: Iterable) -> tuple[list, list]:
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("y_true and y_pred are empty: there is nothing to score")
    kinds = {type(value).__name__ for value in y_true + y_pred}
    if len(kinds) > 1:
        raise ValueError(f"y_true and y_pred mix label types {sorted(kinds)}; use one (e.g. map ids to "
                         f"names with LabelMap.id2label)")
    return y_true, y_pred


def _labels_of(y_true: list, y_pred: list, labels: Iterable | None) -> list:
    """The classes to score: the given ones, or every label seen on either side, sorted."""
    if labels is None:
        return sorted(set(y_true) | set(y_pred))
    labels = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    if not labels:
        raise ValueError("labels is empty: give at least one class to score")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels lists a class more than once: {labels}")
    return labels


def _count(y_true: list, y_pred: list, labels: list) -> list[tuple[int, int, int]]:
    """(tp, n_pred, n_true) per class of ``labels``."""
    tp = Counter(t for t, p in zip(y_true, y_pred) if t == p)
    n_pred, n_true = Counter(y_pred), Counter(y_true)
    return [(tp[c], n_pred[c], n_true[c]) for c in labels]


def accuracy(y_true: Iterable, y_pred: Iterable) -> float:
    """Fraction of examples whose predicted label equals the true one."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def precision_recall_fscore(y_true: Iterable, y_pred: Iterable, labels: Iterable | None = None
                            ) -> dict[Hashable, dict[str, float]]:
    """{class: {"precision", "recall", "f1", "support"}} for each class of ``labels`` (default:
    every label in y_true or y_pred, sorted), as sklearn's precision_recall_fscore_support."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    labels = _labels_of(y_true, y_pred, labels)
    counts = _count(y_true, y_pred, labels)
    return {c: dict(zip(ENTITY_KEYS, _scores(*n))) for c, n in zip(labels, counts)}


def macro_f1(y_true: Iterable, y_pred: Iterable, labels: Iterable | None = None) -> float:
    """Unweighted mean of the per-class F1: a rare class counts as much as a frequent one."""
    per_class = precision_recall_fscore(y_true, y_pred, labels)
    return sum(row["f1"] for row in per_class.values()) / len(per_class)


def classification_report(y_true: Iterable, y_pred: Iterable, target_names: Sequence[str] | None = None,
                          digits: int = 4, *, labels: Iterable | None = None) -> Report:
    """Per-class and averaged scores, the dict ``sklearn.metrics.classification_report(y_true, y_pred,
    labels=labels, target_names=target_names, output_dict=True)`` returns.

    Rows are named ``target_names[i]`` (default ``str(label)``) for the classes of ``labels`` (default:
    every label seen, sorted). "accuracy" (a float) replaces the "micro avg" row when ``labels``
    covers every label seen: for single-label data micro-averaged P, R and F1 all equal accuracy.
    ``digits`` is the precision of the printed table (``print(report)``), not of the numbers.
    """
    y_true, y_pred = _check_pair(y_true, y_pred)
    classes = _labels_of(y_true, y_pred, labels)
    names = [str(c) for c in classes] if target_names is None else list(target_names)
    if len(names) != len(classes):
        raise ValueError(f"{len(names)} target_names for {len(classes)} classes {classes}")
    counts = _count(y_true, y_pred, classes)
    rows = [_scores(*n) for n in counts]
    report = Report(digits)
    for name, row in zip(names, rows):
        report[name] = dict(zip(SKLEARN_KEYS, row))
    if set(classes) >= set(y_true) | set(y_pred):
        report["accuracy"] = accuracy(y_true, y_pred)
    else:
        report["micro avg"] = dict(zip(SKLEARN_KEYS, _micro(counts)))
    report["macro avg"] = dict(zip(SKLEARN_KEYS, _macro(rows)))
    report["weighted avg"] = dict(zip(SKLEARN_KEYS, _weighted(rows)))
    return report


# --- sequence labelling (NER) -------------------------------------------------------------------------


def _parse_tag(tag: object, where: str) -> tuple[str, str]:
    """Splits a tag: "B-PER" -> ("B", "PER"), "O" -> ("O", ""), a bare "B" -> ("B", "_") as in seqeval."""
    if isinstance(tag, str):
        if tag == "O":
            return "O", ""
        if tag in TAG_PREFIXES:
            return tag, "_"
        if tag[:1] in TAG_PREFIXES and tag[1:2] == "-" and len(tag) > 2:
            return tag[0], tag[2:]
    raise ValueError(f"{where} = {tag!r} is not a BIO tag (expected 'O', or B-, I-, E- or S- followed "
                     f"by an entity type, e.g. 'B-PER')")


def extract_entities(tags: Sequence[str], name: str = "tags") -> list[tuple[str, int, int]]:
    """The entities of one tag sequence as (type, start, end), ``end`` inclusive as in seqeval.

    conlleval's chunk rules: a token continues the open entity only if it is I- or E- of the same
    type right after a B- or I-. Anything else closes the open entity (E- and S- close it right after
    themselves), and every tag other than O not continuing an entity starts a new one — so a stray
    "I-PER" after "O" starts an entity, and "B-PER I-LOC" is two entities.
    """
    if isinstance(tags, str):
        raise ValueError(f"{name} is the string {tags!r}; expected a sequence of tags, e.g. ['B-PER', 'O']")
    entities = []
    start = None  # start of the open entity; open exactly when the previous tag is not O
    prev_prefix, prev_type = "O", ""
    for i, tag in enumerate(tags):
        prefix, type_ = _parse_tag(tag, f"{name}[{i}]")
        continues = prev_prefix in ("B", "I") and prefix in ("I", "E") and type_ == prev_type
        if start is not None and not continues:
            entities.append((prev_type, start, i - 1))
            start = None
        if prefix != "O" and not continues:
            start = i
        prev_prefix, prev_type = prefix, type_
    if start is not None:
        entities.append((prev_type, start, len(tags) - 1))
    return entities


def _check_sequences(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> None:
    """One tag per token on both sides: same number of sentences, same length in each."""
    for name, sequences in (("y_true", y_true), ("y_pred", y_pred)):
        if isinstance(sequences, str) or any(isinstance(s, str) for s in sequences):
            raise ValueError(f"{name} must be a list of tag sequences, one per sentence "
                             f"(e.g. [['B-PER', 'O'], ['O']]), not a flat list of tags")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} sentences but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("y_true and y_pred hold no sentences: there is nothing to score")
    for i, (true, pred) in enumerate(zip(y_true, y_pred)):
        if len(true) != len(pred):
            raise ValueError(f"sentence {i}: y_true[{i}] has {len(true)} tags but y_pred[{i}] has "
                             f"{len(pred)}")


def _entities_by_type(sequences: Sequence[Sequence[str]], name: str) -> dict[str, set[tuple[int, int, int]]]:
    """type -> {(sentence, start, end)}: an entity is identified by where it is, and its type."""
    found: dict[str, set[tuple[int, int, int]]] = {}
    for s, tags in enumerate(sequences):
        for type_, start, end in extract_entities(tags, f"{name}[{s}]"):
            found.setdefault(type_, set()).add((s, start, end))
    return found


def entity_report(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> Report:
    """Entity-level scores of NER: ``{type: {"precision", "recall", "f1", "support"}, "micro avg",
    "macro avg", "weighted avg"}``, the numbers of ``seqeval.metrics.classification_report(y_true,
    y_pred, output_dict=True)``. A predicted entity counts only if its type, start and end all match.
    """
    _check_sequences(y_true, y_pred)
    true, pred = _entities_by_type(y_true, "y_true"), _entities_by_type(y_pred, "y_pred")
    types = sorted(set(true) | set(pred))
    counts = [(len(true.get(t, set()) & pred.get(t, set())), len(pred.get(t, ())), len(true.get(t, ())))
              for t in types]
    rows = [_scores(*n) for n in counts]
    report = Report()
    for type_, row in zip(types, rows):
        report[type_] = dict(zip(ENTITY_KEYS, row))
    report["micro avg"] = dict(zip(ENTITY_KEYS, _micro(counts)))
    report["macro avg"] = dict(zip(ENTITY_KEYS, _macro(rows)))
    report["weighted avg"] = dict(zip(ENTITY_KEYS, _weighted(rows)))
    return report


def token_report(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], digits: int = 4) -> Report:
    """Per-tag scores over all tokens (B-PER, I-PER and O are separate classes): the
    `classification_report` of the flattened tag sequences. Lesson 11 shows why it flatters a tagger
    compared with `entity_report`."""
    _check_sequences(y_true, y_pred)
    flat_true, flat_pred = [t for s in y_true for t in s], [t for s in y_pred for t in s]
    return classification_report(flat_true, flat_pred, digits=digits)


# --- printing -------------------------------------------------------------------------------------------


def format_report(report: Mapping, digits: int | None = None) -> str:
    """The table scikit-learn and seqeval print, from a `classification_report`, `entity_report` or
    `token_report` dict (``digits`` defaults to the report's own)."""
    digits = getattr(report, "digits", 4) if digits is None else digits
    classes = [name for name in report if name not in AVERAGE_ROWS]
    width = max([len(str(name)) for name in classes] + [len("weighted avg"), digits])

    def line(name: str, row: Mapping) -> str:
        f1 = row["f1-score"] if "f1-score" in row else row["f1"]
        cells = "".join(f" {value:>9.{digits}f}" for value in (row["precision"], row["recall"], f1))
        return f"{name:>{width}} {cells} {row['support']:>9}"

    lines = [f"{'':>{width}} " + "".join(f" {header:>9}" for header in SKLEARN_KEYS), ""]
    lines += [line(str(name), report[name]) for name in classes]
    lines.append("")
    for name in AVERAGE_ROWS:
        if name == "accuracy" and name in report:
            # accuracy is one number: printed in the F1 column, with the total support beside it
            total = report["macro avg"]["support"]
            blank = f" {'':>9}" * 2
            lines.append(f"{name:>{width}} {blank} {report[name]:>9.{digits}f} {total:>9}")
        elif name in report:
            lines.append(line(name, report[name]))
    return "\n".join(lines) + "\n"


# --- over seeds (lesson 13) -------------------------------------------------------------------------

# t_{0.975}(df) for df = 1..30: the 97.5% quantile of Student's t distribution, so that
# mean ± t * s / sqrt(n) is a 95% confidence interval for the mean of n runs (df = n - 1) when the runs
# are independent draws of a roughly normal number. Values of scipy.stats.t.ppf(0.975, df), to 4
# decimals (tests/test_metrics.py compares them); beyond 30 runs we do not go.
T_975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


@dataclass(frozen=True)
class SeedSummary:
    """One number over n runs: mean, sample std (divisor n - 1), standard error of the mean
    (std / sqrt(n)) and the 95% t-interval of the mean. Prints as "0.912 ± 0.008 (n=5)"."""

    n: int
    mean: float
    std: float
    sem: float
    low: float
    high: float

    def __str__(self) -> str:
        return self.format()

    def format(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"


def seed_summary(values: Iterable[float]) -> SeedSummary:
    """Mean ± sample std of a metric over runs with different seeds, with its 95% t-interval.
    Needs 2 to 31 values: one run has no spread to report."""
    values = [float(v) for v in values]
    n = len(values)
    if not 2 <= n <= len(T_975) + 1:
        raise ValueError(f"seed_summary: expected 2 to {len(T_975) + 1} values (one per seed), got {n}")
    mean, std = statistics.fmean(values), statistics.stdev(values)
    sem = std / math.sqrt(n)
    half = T_975[n - 2] * sem
    return SeedSummary(n=n, mean=mean, std=std, sem=sem, low=mean - half, high=mean + half)
