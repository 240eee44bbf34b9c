"""`configs/seg_digits_kd.yaml` trained end to end at a tiny size through `kd_engine.run.train`:
the teacher is trained and cached by the engine, the student distilled per pixel, and the store
holds one row per training image per epoch, evaluation rows, dense metrics and the probe maps."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kd_engine.cli import main
from kd_engine.config import load_config
from kd_engine.run import train
from kd_engine.store import open_run

REPO = Path(__file__).resolve().parent.parent
N_TRAIN, N_VAL, N_TEST, EPOCHS = 24, 6, 8, 2


def tiny(tmp_path: Path, *extra: str):
    return load_config(REPO / "configs" / "seg_digits_kd.yaml", [
        f"runs_dir={tmp_path / 'runs'}", f"cache_dir={tmp_path / 'cache'}", f"epochs={EPOCHS}", "device=cpu",
        f"data.params={{n_train: {N_TRAIN}, n_val: {N_VAL}, n_test: {N_TEST}}}", "data.batch_size=10",
        "teacher.params.width=4", "teacher.train.epochs=1", "student.params.width=2", "record.tensorboard=false",
        "record.attention_maps=4", *extra])


def test_seg_digits_kd_trains_and_records_dense_rows_and_maps(tmp_path):
    run = open_run(train(tiny(tmp_path, "teacher.params.depth_head=true", "student.params.depth_head=true")))
    meta = run.meta()
    assert run.status() == "finished" and meta["task"] == "dense" and meta["dense_outputs"] == ["depth"]
    assert len(list((tmp_path / "cache" / "teachers").glob("*.safetensors"))) == 1  # the engine cached it
    for epoch in range(EPOCHS):
        rows = run.instances("train", epoch=epoch)
        assert len(rows) == N_TRAIN and rows["instance_id"].is_unique
        for column in ("student_loss", "teacher_loss", "weight", "distill_loss", "term_pixel_kd",
                       "student_pixel_acc", "teacher_pixel_acc", "disagreement", "student_depth_mse"):
            assert rows[column].notna().all(), column
        assert np.allclose(rows["distill_loss"], rows["term_pixel_kd"])
    assert len(run.instances("val")) == N_VAL * EPOCHS and len(run.instances("test")) == N_TEST
    test = run.instances("test")
    assert test[["student_miou", "teacher_miou", "disparity", "student_rmse"]].notna().all().all()
    final = run.final_metrics()
    for key in ("test/student_mIoU", "test/teacher_mIoU", "test/student_rmse", "test/disparity",
                "test/student_IoU_background", "val/student_mIoU"):
        assert key in final, key
    assert abs(final["test/disparity"] - test["disparity"].mean()) < 1e-6
    maps = run.artifacts("dense_map")
    assert sorted(maps["name"]) == sorted(f"dense/test/{m}" for m in (
        "true_mask", "student_mask", "teacher_mask", "disparity", "true_depth", "student_depth", "teacher_depth",
        "depth_disparity"))
    disparity = run.load_artifact("dense/test/disparity")
    assert disparity.shape == (4, 16, 16) and (disparity >= 0).all()
    assert np.allclose(disparity.astype(float).mean(axis=(1, 2)), test.sort_values("instance_id")["disparity"][:4],
                       atol=2e-3)  # float16 maps against the float rows
    assert set(run.images(test["instance_id"][:4]))  # the probe images are in the image bank
    assert not run.features().empty  # shared layers' disparity recorded each epoch


def test_bad_dense_values_are_one_line_errors(tmp_path, capsys):
    for override, expected in (("data.params.grid=0", "data.params.grid: must be a positive integer, got 0"),
                               ("distill.terms.0.loss=kd", "distill.terms.0.loss: kd takes (B, C) logits"),
                               ("data.image_size=20", "data.image_size: digit scenes are"),
                               ("use_teacher_bank=true", "use_teacher_bank: dense runs (digit_scenes) have no crop bank")):
        code = main(["train", str(REPO / "configs" / "seg_digits_kd.yaml"), "--set", f"runs_dir={tmp_path / 'runs'}",
                     "--set", f"cache_dir={tmp_path / 'cache'}", "--set", override])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # refused before anything ran
