"""AID weight spread and noise AUROC against independent computations."""
import numpy as np
import pandas as pd
import pytest

from sklearn.metrics import roc_auc_score

from kd_engine.weighting.aid_report import auroc_verdict, bootstrap_auroc, image_weights, noise_auroc, weight_spread


def _rows():
    # epoch 1: four images x two levels; images 2 and 4 corrupted. Image mean weights:
    # 1: 0.95, 2: 0.60, 3: 0.80, 4: 0.85 -> 1-w ranks: noisy {0.40, 0.15} vs clean {0.05, 0.20}
    # pairs (noisy > clean): 0.40>0.05, 0.40>0.20, 0.15>0.05, 0.15<0.20 -> AUROC 3/4.
    w = {1: (0.9, 1.0), 2: (0.5, 0.7), 3: (0.8, 0.8), 4: (0.8, 0.9)}
    noise = {1: 0, 2: 1, 3: 0, 4: 2}
    rows = [{"epoch": 1, "instance_id": i, "level": lv, "gt": -1, "aid_weight": w[i][lv],
             "weight": 1.0, "label_noise": noise[i], "noisy": -1} for i in w for lv in (0, 1)]
    rows += [{"epoch": 1, "instance_id": 2, "level": -1, "gt": 0, "aid_weight": 0.3, "weight": 1.0,
              "label_noise": 1, "noisy": 1},
             {"epoch": 1, "instance_id": 2, "level": -1, "gt": 1, "aid_weight": 0.9, "weight": 1.0,
              "label_noise": 1, "noisy": 0},
             {"epoch": 1, "instance_id": 1, "level": -1, "gt": 0, "aid_weight": 0.7, "weight": 1.0,
              "label_noise": 0, "noisy": 0}]
    return pd.DataFrame(rows)


def test_noise_auroc_hand_computed():
    out = noise_auroc(_rows()).iloc[0]
    assert out["auroc_image"] == pytest.approx(0.75)
    assert (out["n_noisy"], out["n_clean"]) == (2, 2)
    # boxes: noisy {1-0.3=0.7} vs clean {0.1, 0.3} -> 1.0
    assert out["auroc_box"] == pytest.approx(1.0)
    per_image = image_weights(_rows()).set_index("instance_id")
    assert per_image.loc[2, "w"] == pytest.approx(0.6) and bool(per_image.loc[4, "noisy"])


def test_auroc_is_nan_with_one_class_and_refuses_without_noise():
    rows = _rows().assign(label_noise=0)
    assert np.isnan(noise_auroc(rows).iloc[0]["auroc_image"])
    with pytest.raises(ValueError, match="label_noise"):
        noise_auroc(rows.drop(columns="label_noise"))


def test_weight_spread_matches_numpy():
    w = np.random.default_rng(0).uniform(0.5, 1.0, 101)
    s = weight_spread(w)
    assert s["mean"] == pytest.approx(w.mean()) and s["std"] == pytest.approx(np.std(w, ddof=1))
    assert s["p5"] == pytest.approx(np.sort(w)[5]) and s["p95"] == pytest.approx(np.sort(w)[95])


def _frame(w, noisy):
    return pd.DataFrame({"instance_id": np.arange(len(w)), "w": w, "noisy": noisy})


def test_bootstrap_auroc_spread_comes_from_the_images():
    rng = np.random.default_rng(0)
    noisy = rng.random(400) < 0.3
    separated = _frame(np.where(noisy, 0.5, 0.9) + rng.normal(0, 0.02, 400), noisy)
    stats = bootstrap_auroc([separated], n_boot=200)
    assert stats["mean"] == pytest.approx(roc_auc_score(noisy, 1 - separated["w"]))
    assert stats["lo"] > 0.95 and auroc_verdict(stats) == "resolved"
    # weights unrelated to the noise: the interval holds chance
    unrelated = _frame(rng.random(400), noisy)
    stats = bootstrap_auroc([unrelated], n_boot=200)
    assert stats["lo"] < 0.5 < stats["hi"] and auroc_verdict(stats) == "within noise"
    assert 0.01 < stats["std"] < 0.06  # ~ sqrt(AUROC(1-AUROC)/min class size)
    # the same weights for every seed (AID's are the teacher's): the same answer as one seed
    again = bootstrap_auroc([separated, separated.sample(frac=1, random_state=1)], n_boot=200)
    assert again["mean"] == pytest.approx(bootstrap_auroc([separated], n_boot=200)["mean"])
    with pytest.raises(ValueError, match="same images"):
        bootstrap_auroc([separated, separated.iloc[1:]])
