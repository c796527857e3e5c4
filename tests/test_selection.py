"""The checkpoint rule (kcs_tl.discovery.selection), as properties over any criteria and any checkpoints.

A checkpoint is judged by ``judged`` (what the search records) and compared by ``is_better``;
``Criteria.shortfalls`` gives each criterion's shortfall in [0, 1], the numbers both the rule and
``Evaluation.check()`` read.
"""

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcs_tl.discovery.selection import is_better, judged
from kcs_tl.evaluation import Criteria, Evaluation

unit = st.floats(0, 1)
rise = st.floats(-0.9, 1e6)  # perplexity rise of the remaining model: from a 10x fall to a millionfold rise
ratio = st.floats(0, 10)  # control top-1 ratio: above 1 when the remaining model gets more right
criteria = st.builds(Criteria, target_top1_max=st.floats(0, 0.99), control_top1_min_ratio=unit,
                     lm_ppl_max_rise=st.floats(0, 10), sparsity_min=unit)


checkpoint = st.tuples(unit, ratio, rise, unit)  # any checkpoint: target top-1, control ratio, LM ppl rise, sparsity


def holds(c: Criteria, t, r, x, s) -> dict[str, bool]:
    return {"target_top1": t <= c.target_top1_max, "control_top1_ratio": r >= c.control_top1_min_ratio,
            "lm_ppl_rise": x <= c.lm_ppl_max_rise, "sparsity": s >= c.sparsity_min}


@given(criteria, unit, st.data())
def test_each_shortfall_is_in_0_1_and_0_exactly_when_its_criterion_holds(c, original, data):
    t, r, x, s = data.draw(checkpoint)
    gaps = c.shortfalls(t, r, x, s, original_target_top1=original)
    assert all(0 <= v <= 1 for v in gaps.values())
    assert {k: v == 0 for k, v in gaps.items()} == holds(c, t, r, x, s)


@given(criteria, unit, st.data())
def test_a_checkpoint_meeting_all_criteria_beats_any_that_does_not(c, original, data):
    met = judged(c, original, data.draw(st.floats(0, c.target_top1_max)),
                 data.draw(st.floats(c.control_top1_min_ratio, 10)), data.draw(st.floats(-0.9, c.lm_ppl_max_rise)),
                 data.draw(st.floats(c.sparsity_min, 1)))
    other = judged(c, original, *data.draw(checkpoint))
    assert met["criteria_met"]
    if not other["criteria_met"]:
        assert is_better(met, other) and not is_better(other, met)


@given(criteria, unit, st.data())
def test_among_checkpoints_meeting_all_criteria_the_sparser_wins(c, original, data):
    def meeting(sparsity):
        return judged(c, original, data.draw(st.floats(0, c.target_top1_max)),
                      data.draw(st.floats(c.control_top1_min_ratio, 10)),
                      data.draw(st.floats(-0.9, c.lm_ppl_max_rise)), sparsity)

    low, high = sorted(data.draw(st.lists(st.floats(c.sparsity_min, 1), min_size=2, max_size=2, unique=True)))
    assert is_better(meeting(high), meeting(low)) and not is_better(meeting(low), meeting(high))


@given(criteria, st.data())
def test_forgetting_nothing_never_beats_forgetting_and_keeping_the_rest(c, data):
    """A (target top-1 as the original's, anything else) never beats B, which keeps the control facts and
    the text and either forgets enough (any sparsity) or forgets anything at all while sparse enough."""
    original = data.draw(st.floats(c.target_top1_max, 1, exclude_min=True))
    nothing = judged(c, original, original, data.draw(ratio), data.draw(rise), data.draw(unit))
    forgot_enough = data.draw(st.booleans())
    target = data.draw(st.floats(0, c.target_top1_max) if forgot_enough
                       else st.floats(0, original, exclude_max=True))
    sparsity = data.draw(unit if forgot_enough else st.floats(c.sparsity_min, 1))
    kept = judged(c, original, target, data.draw(st.floats(c.control_top1_min_ratio, 10)),
                  data.draw(st.floats(-0.9, c.lm_ppl_max_rise)), sparsity)
    assert not nothing["criteria_met"]
    assert not is_better(nothing, kept)


@given(criteria, unit, st.data())
def test_the_rule_is_monotone_in_each_criterion(c, original, data):
    """Improving one criterion, the others fixed, never makes a checkpoint worse (nor its shortfall larger)."""
    t, r, x, s = numbers = data.draw(checkpoint)
    which = data.draw(st.sampled_from(range(4)))
    improved = list(numbers)
    improved[which] = data.draw([st.floats(0, t), st.floats(r, 10), st.floats(-0.9, x), st.floats(s, 1)][which])
    worse, better = judged(c, original, *numbers), judged(c, original, *improved)
    assert better["shortfall"] <= worse["shortfall"]
    assert not is_better(worse, better)


accuracy = st.integers(0, 1000).map(lambda k: k / 1000)  # a top-1 accuracy is a fraction of a set, never subnormal


@given(criteria, unit, accuracy, st.floats(1, 1e4), st.data())
def test_evaluation_check_judges_what_the_search_judges(c, original_target, original_control, base_ppl, data):
    """check() reads the same criterion values (one zero rule for the control ratio) and the same shortfalls."""
    t, r, x, s = data.draw(checkpoint)
    rows = [("target", "original", "top1", original_target), ("target", "remaining", "top1", t),
            ("control_kg", "original", "top1", original_control),
            ("control_kg", "remaining", "top1", r * original_control),
            ("control_lm", "original", "ppl", base_ppl), ("control_lm", "remaining", "ppl", base_ppl * (1 + x))]
    ev = Evaluation(pd.DataFrame(rows, columns=["set", "model", "metric", "value"]), s, 0)
    values = ev.criterion_values()
    assert values["control_ratio"] == (pytest.approx(r) if original_control > 0 else 1.0)
    assert values["lm_ppl_rise"] == pytest.approx(x, rel=1e-9, abs=1e-9)
    search = judged(c, original_target, *values.values())
    checks = ev.check(c)
    assert {k: bool(v) for k, v in checks.items()} == holds(c, *values.values())
    for check, value in zip(checks.values(), values.values()):  # value, threshold and margin as judged
        assert check.value == value and (check.margin >= 0) == bool(check) or check.threshold == 0
    assert all(ev.check(c).values()) == search["criteria_met"]


def test_the_worked_example_of_the_docs():
    """docs/concepts.md: B forgot and kept the control facts at a doubled perplexity; A forgot nothing."""
    c = Criteria()
    a = judged(c, 0.90, 0.90, 1.00, 0.00, 0.990)
    b = judged(c, 0.90, 0.05, 0.97, 1.00, 0.970)
    assert a["shortfall"] == pytest.approx(1.0) and b["shortfall"] == pytest.approx(0.475 + 0.01 / 0.98)
    assert is_better(b, a) and not is_better(a, b)
    assert is_better(judged(c, 0.90, 0.00, 1.00, 0.03, 0.986), b)
