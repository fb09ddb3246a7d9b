"""controls.py: the two-sample KS test, the crop features, the loss-gradient check and the code
references of the loop list, by hand; its README block."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from benchmarks.accuracy import controls, controls_loop, paired


def test_ks_two_sample_without_scipy_by_hand(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # the fallback, whether or not scipy is installed
    assert controls.ks_two_sample(np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 2.0])) == (0.0, 1.0)
    d, p = controls.ks_two_sample(np.zeros(4), np.ones(4))
    lam = (math.sqrt(2) + 0.12 + 0.11 / math.sqrt(2)) * 1.0
    assert d == 1.0 and p == pytest.approx(2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101)), rel=1e-12)
    assert p == pytest.approx(0.01107, abs=1e-5)
    d, _ = controls.ks_two_sample(np.array([0.0, 1.0, 1.0, 2.0]), np.array([1.0, 1.0]))  # ties: F_a(1) = 3/4, F_b(1) = 1
    assert d == 0.25


def test_t_quantiles_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    assert [paired.t_quantile(df) for df in (1, 3, 10)] == [12.706, 3.182, 2.228]
    with pytest.raises(ValueError, match="no t quantile for 11 degrees of freedom without scipy"):
        paired.t_quantile(11)


def test_box_features_by_hand():
    features = controls.box_features(np.array([[2, 4, 8, 16]]), np.array([True]), np.array([[32, 32]]))
    assert {k: float(v[0]) for k, v in features.items()} == {"area": 0.125, "log_ratio": math.log(2), "centre_y": 0.1875, "centre_x": 0.375,
                                                             "flip": 1.0}


def test_fkd_and_online_kd_losses_have_the_same_gradient_at_the_same_objective():
    assert controls_loop.gradient_gap(0.0) < 1e-6 and controls_loop.gradient_gap(0.3) < 1e-6


def test_code_references_follow_the_code():
    assert controls_loop.where("train/modes.py", "self.teacher = teacher.eval()").startswith("train/modes.py:")
    assert controls_loop.where("train/modes.py", "no such line") == "train/modes.py: (not found: 'no such line'; re-check)"


def test_the_controls_block_renders():
    result = {"labels": {"images": 100, "crops_per_image": 32,
                         "stores": [{"scheme": "full", "crops": 3200, "kl_mean": 3e-8, "kl_max": 3e-7, "tv_mean": 1e-5, "tv_max": 1e-4,
                                     "max_abs_diff": 2e-4, "top1_agreement": 1.0, "labelgen_cut_identical": 1.0}]},
              "crops": {"images": 10000, "stored_crops": 320000, "online_crops": 320000, "online_seed": 0,
                        "features": [{"feature": "area", "stored_mean": 0.576, "online_mean": 0.5765, "stored_std": 0.19, "online_std": 0.19,
                                      "ks_statistic": 0.0015, "ks_p": 0.84}]},
              "loop": [{"item": "x", "fkd": "a", "online": "b", "same": False, "checked": "c", "where": ["f.py:1", "g.py:2"]}]}
    text = controls.describe(result)
    assert "| full | 3200 | 3.00e-08 | 3.00e-07 | 1.00e-05 | 1.00e-04 | 2.00e-04 | 1.0000 | 1.0000 |" in text
    assert "| area | 0.5760 | 0.5765 | 0.1900 | 0.1900 | 0.0015 | 0.840 |" in text
    assert text.endswith("| x | a | b | **no** | c | f.py:1, g.py:2 |")
