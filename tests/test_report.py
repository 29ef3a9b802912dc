"""eval/report.py: reading finished runs and writing the report, on hand-made run folders."""

import json
import os

import numpy as np
import pytest

from eval import plots, report


def test_dose_response_groups_arms_that_differ_only_in_lambda(tmp_path):
    eff = {"dispersion": "none", "dispersion_weight": 0.1, "n_layer": 2}
    meta = {"config": {"baseline": "ce"}, "arms": {
        "ce": {"effective": eff}, "a1": {"effective": {**eff, "dispersion": "angular", "dispersion_weight": 1.0}},
        "a01": {"effective": {**eff, "dispersion": "angular", "dispersion_weight": 0.1}},
        "a03": {"effective": {**eff, "dispersion": "angular", "dispersion_weight": 0.3}},
        "deep": {"effective": {**eff, "dispersion": "angular", "n_layer": 4}}}}
    arm = lambda cos: {"seeds": [0], "mean_cos_last": (cos, np.nan), "spearman": (0.0, np.nan),  # noqa: E731
                       "avg_acc": (0.25, np.nan), "val_loss": (5.0, np.nan)}
    summary = {"arms": {"ce": arm(0.9), "a1": arm(0.2), "a01": arm(0.7), "a03": arm(0.5), "deep": arm(0.1)}}
    (group,) = report.dose_response(meta, {}, summary)
    assert [(p["arm"], p["lambda"]) for p in group["points"]] == [("ce", 0.0), ("a01", 0.1), ("a03", 0.3), ("a1", 1.0)]
    assert group["rank_corr_with_lambda"]["mean_cos_last"] == pytest.approx(-1.0)
    assert os.path.getsize(plots.plot_dose_response([group], str(tmp_path / "dose.png"))) > 0


# ---------------------------------------------------------------------- the best checkpoint

def test_best_checkpoint_is_the_first_lowest_val_loss_after_iteration_0(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"iter": 0, "val_loss": 1.0}, {"iter": 1, "loss": 0.5}, {"iter": 2, "val_loss": 3.0},
        {"iter": 4, "val_loss": 2.5}, {"iter": 6, "val_loss": 2.5}, {"iter": 8, "val_loss": 2.7})))
    assert report.best_checkpoint(str(tmp_path)) is None  # no ckpt_best.pt: not trained with keep_best
    (tmp_path / "ckpt_best.pt").write_bytes(b"")
    assert report.best_checkpoint(str(tmp_path)) == {"iter": 4, "val_loss": 2.5}
