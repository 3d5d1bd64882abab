"""interpret: per-class report, most confused pairs and top losses against answers worked out by hand."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from cifarkit.report.interpret import classification_report, confusion_matrix, most_confused, top_losses

CLASSES = ("a", "b", "c")
# confusion (rows true, columns predicted): a [2 1 1], b [0 1 1], c [1 0 3]
TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
PRED = [0, 0, 1, 1, 2, 2, 2, 0, 2, 2]


def test_confusion_matrix_counts_rows_true_columns_predicted() -> None:
    """Each (true, predicted) pair is counted in row true, column predicted."""
    assert confusion_matrix(TRUE, PRED, 3).tolist() == [[2, 1, 1], [0, 1, 1], [1, 0, 3]]


def test_classification_report_matches_hand_computed_values() -> None:
    """precision = diagonal / column sum, recall = diagonal / row sum, F1 their harmonic mean, macro = plain mean."""
    report = classification_report(TRUE, PRED, CLASSES)
    np.testing.assert_allclose(report.precision, [2 / 3, 1 / 2, 3 / 5])
    np.testing.assert_allclose(report.recall, [1 / 2, 1 / 2, 3 / 4])
    np.testing.assert_allclose(report.f1, [4 / 7, 1 / 2, 2 / 3])
    assert report.support.tolist() == [4, 2, 4] and report.accuracy == pytest.approx(0.6)
    assert report.macro == pytest.approx({"precision": 53 / 90, "recall": 7 / 12, "f1": 73 / 126})


def test_classification_report_renders_rows_csv_and_fixed_width_text() -> None:
    """rows() ends with the macro average; to_csv() parses back to those rows; the text table is sklearn's layout."""
    report = classification_report(TRUE, PRED, CLASSES)
    rows = report.rows()
    assert [r["class"] for r in rows] == ["a", "b", "c", "macro avg"] and rows[-1]["support"] == 10
    parsed = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert parsed[0]["class"] == "a" and parsed[0]["support"] == "4"
    assert [float(parsed[0][k]) for k in ("precision", "recall", "f1")] == pytest.approx([2 / 3, 1 / 2, 4 / 7])
    assert str(report) == (
        "          precision    recall  f1-score   support\n"
        "\n"
        "        a      0.67      0.50      0.57         4\n"
        "        b      0.50      0.50      0.50         2\n"
        "        c      0.60      0.75      0.67         4\n"
        "\n"
        " accuracy                          0.60        10\n"
        "macro avg      0.59      0.58      0.58        10\n")


def test_a_class_never_predicted_has_precision_zero_not_nan() -> None:
    """Zero division gives 0 (sklearn's zero_division=0), so macro averages stay finite."""
    report = classification_report([0, 1, 2], [0, 0, 0], CLASSES)
    assert report.precision.tolist() == [1 / 3, 0.0, 0.0] and report.f1.tolist() == [0.5, 0.0, 0.0]
    assert np.isfinite(list(report.macro.values())).all()


def test_most_confused_orders_pairs_by_count_and_leaves_out_the_diagonal() -> None:
    """(b->a) 3 times, (a->b) twice, then the single confusions in row-major order; correct ones never appear."""
    true, pred = [0, 0, 0, 1, 1, 1, 1, 2, 2], [1, 1, 2, 0, 0, 0, 2, 2, 2]
    assert most_confused(true, pred, CLASSES) == [("b", "a", 3), ("a", "b", 2), ("a", "c", 1), ("b", "c", 1)]
    assert most_confused(true, pred, CLASSES, top=2) == [("b", "a", 3), ("a", "b", 2)]
    assert most_confused([0, 1], [0, 1], CLASSES) == []


def test_top_losses_lists_only_mistakes_highest_loss_first() -> None:
    """Image 0 is right and left out; image 2 (p_true 0.1) comes before 1 and 3 (p_true 0.3, a tie kept in order)."""
    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
    worst = top_losses(probs, [0, 1, 0, 2], k=None)
    assert worst.index.tolist() == [2, 1, 3] and worst.pred.tolist() == [2, 0, 1]
    np.testing.assert_allclose(worst.p_true, [0.1, 0.3, 0.3])
    np.testing.assert_allclose(worst.p_pred, [0.8, 0.6, 0.5])
    np.testing.assert_allclose(worst.loss, -np.log([0.1, 0.3, 0.3]))
    assert top_losses(probs, [0, 1, 0, 2], k=2).index.tolist() == [2, 1]


def test_mismatched_inputs_are_refused() -> None:
    """Labels outside the classes, or lengths that differ, raise ValueError rather than a wrong table."""
    with pytest.raises(ValueError, match="outside"):
        classification_report([0, 3], [0, 1], CLASSES)
    with pytest.raises(ValueError, match="length"):
        most_confused([0, 1], [0], CLASSES)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        top_losses(np.ones((2, 3)), [0, 1, 2])
