"""BOSS's self-distillation step (paper 23): α·CE + (1 − α)·MSE on logits, student from a checkpoint."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_engine.config import validate
from kd_engine.errors import CheckpointError, ConfigError
from kd_engine.methods.boss import BOSS, logit_mse
from kd_engine.models import build_model
from kd_engine.trainers.checkpoint import save_weights


def test_logit_mse_hand_value_and_reductions():
    s, t = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert torch.allclose(logit_mse(s, t, "none"), torch.tensor([2.0, 5.0]))  # mean over classes
    assert logit_mse(s, t).item() == pytest.approx(3.5) and logit_mse(s, t, "sum").item() == pytest.approx(7.0)
    assert logit_mse(s, s.clone()).item() == 0.0


def _cfg(**params):
    spec = {"name": "mlp", "params": {"hidden": 16, "layers": 1}}
    return validate({"name": "b", "method": "boss", "student": spec, "teacher": spec,
                     "distill": {"params": params}})


def test_loss_is_alpha_ce_plus_one_minus_alpha_mse_and_student_starts_from_the_pool(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg()
    source = build_model(cfg.student, (1, 8, 8), 10)
    save_weights(source, tmp_path / "init.safetensors")
    cfg = _cfg(alpha=0.25, init_from=str(tmp_path / "init.safetensors"))
    student, teacher = build_model(cfg.student, (1, 8, 8), 10), build_model(cfg.teacher, (1, 8, 8), 10)
    method = BOSS(cfg, student, teacher, (1, 8, 8))
    for a, b in zip(student.state_dict().values(), source.state_dict().values()):
        assert torch.equal(a, b)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    out = method(x, y)
    s, t = student(x), teacher(x)
    assert out.losses["task"].item() == pytest.approx(0.25 * F.cross_entropy(s, y).item(), rel=1e-5)
    assert out.losses["distill"].item() == pytest.approx(0.75 * F.mse_loss(s, t).item(), rel=1e-5)


@pytest.mark.parametrize("params, error, match", [
    ({"alpha": 1.5}, ConfigError, "distill.params.alpha"),
    ({"beta": 1}, ConfigError, "unknown parameter 'beta'"),
    ({"init_from": "/nope.safetensors"}, CheckpointError, "distill.params.init_from"),
])
def test_bad_params(params, error, match):
    cfg = _cfg(**params)
    with pytest.raises(error, match=match):
        BOSS(cfg, build_model(cfg.student, (1, 8, 8), 10), build_model(cfg.teacher, (1, 8, 8), 10), (1, 8, 8))
