"""The sweep's choice of a best row."""

import math

from fastbind.evaluation.sweep import best_row


def test_best_row_is_the_lowest_finite_perplexity_whatever_the_order():
    rows = [{"lr": 3e-4, "ppl": math.nan}, {"lr": 1e-4, "ppl": 150.0}, {"lr": 1e-3, "ppl": math.inf},
            {"lr": 3e-5, "ppl": 134.9}, {"lr": 1e-5, "ppl": 144.3}]
    for shift in range(len(rows)):
        assert best_row(rows[shift:] + rows[:shift])["lr"] == 3e-5
    assert best_row([{"ppl": math.nan}])["ppl"] != best_row([{"ppl": math.nan}])["ppl"]  # all diverged: one of them
    assert best_row([]) is None
