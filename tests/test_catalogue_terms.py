"""The catalogue's module-owning terms (VID, OFD, KDSVD, ReviewKD, CRD) and the ``maps`` kind
inside the standard distiller: what they own, what they check at build time, what they save."""
import math

import pytest
import torch

from conftest import digits_raw
from kd_engine.config import validate
from kd_engine.errors import ConfigError
from kd_engine.losses import ofd_margin
from kd_engine.methods.standard import Standard
from kd_engine.models import build_model

SHAPE = (1, 8, 8)


def distiller(tmp_path, term, student_width=8):
    raw = digits_raw(tmp_path / "runs", tmp_path / "cache", {"distill.terms": [term]})
    raw["student"]["params"]["width"] = student_width
    cfg = validate(raw)
    torch.manual_seed(0)
    student, teacher = build_model(cfg.student, SHAPE, 10), build_model(cfg.teacher, SHAPE, 10)
    return Standard(cfg, student, teacher, SHAPE)


def step(model, ids=None, batch=8):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, *SHAPE, generator=g), torch.randint(0, 10, (batch,), generator=g)
    model.train()
    return model(x, y, ids=ids) if model.wants_ids else model(x, y)


def test_vid_owns_regressor_and_variance_and_trains_them(tmp_path):
    model = distiller(tmp_path, {"loss": "vid", "student_layer": "layer2", "teacher_layer": "layer3"})
    head = model.terms[0].adapter
    assert torch.allclose(head.variance(), torch.full((64,), 5.0))  # teacher layer3: 4·16 channels
    out = step(model)
    out.total.backward()
    assert head.alpha.grad is not None and head.regressor[0].weight.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())
    assert "terms" in model.extra_state_modules()
    assert any(k.endswith("adapter.alpha") for k in model.state_dict())


def test_ofd_margin_from_the_teacher_batchnorm_and_refuses_other_layers(tmp_path):
    model = distiller(tmp_path, {"loss": "ofd", "student_layer": "layer2.0.bn2", "teacher_layer": "layer2.0.bn2"})
    bn = dict(model.teacher.named_modules())["layer2.0.bn2"]
    assert torch.allclose(model.terms[0].adapter.margin, ofd_margin(bn.bias.detach(), bn.weight.detach()))
    assert step(model).per_sample["term_ofd"].shape == (8,)
    with pytest.raises(ConfigError, match=r"distill.terms.0.params.teacher_bn: .*'layer2' is Sequential"):
        distiller(tmp_path, {"loss": "ofd", "student_layer": "layer2", "teacher_layer": "layer2"})


def test_kdsvd_and_reviewkd_read_several_layers(tmp_path):
    model = distiller(tmp_path, {"loss": "kdsvd", "student_layer": "layer1,layer2",
                                 "teacher_layer": "layer1,layer2"}, student_width=16)
    assert model.student_layers == ["layer1", "layer2"]
    assert step(model).per_sample["term_kdsvd"].shape == (8,)
    with pytest.raises(ConfigError, match="equal channels"):
        distiller(tmp_path, {"loss": "kdsvd", "student_layer": "layer1,layer2", "teacher_layer": "layer1,layer2"})
    with pytest.raises(ConfigError, match=r"student_layer: loss kdsvd needs 2\+"):
        distiller(tmp_path, {"loss": "kdsvd", "student_layer": "layer1", "teacher_layer": "layer1"})
    review = distiller(tmp_path, {"loss": "reviewkd", "student_layer": "layer1,layer2,layer3,pool",
                                  "teacher_layer": "layer1,layer2,layer3,pool", "params": {"mid_channels": 8}})
    assert len(review.terms[0].adapter.fusions) == 4
    assert review.terms[0].adapter.fusions[-1].attention is None  # the deepest stage has nothing to fuse
    step(review).total.backward()
    assert review.terms[0].adapter.fusions[0].attention[0].weight.grad is not None
    with pytest.raises(ConfigError, match="need equal H, W"):
        distiller(tmp_path, {"loss": "reviewkd", "student_layer": "layer1,layer2", "teacher_layer": "layer2,layer3"})


def test_a_bad_module_parameter_is_one_config_line(tmp_path):
    # one line naming the params (and, once the range checker reads the signature, the key)
    with pytest.raises(ConfigError, match=r"distill\.terms\.0\.params(: invalid value for loss vid|\.mid_channels)"):
        distiller(tmp_path, {"loss": "vid", "student_layer": "layer2", "teacher_layer": "layer2",
                             "params": {"mid_channels": "wide"}})
    with pytest.raises(ConfigError, match="init_variance must exceed eps"):
        distiller(tmp_path, {"loss": "vid", "student_layer": "layer2", "teacher_layer": "layer2",
                             "params": {"init_variance": 1e-6}})


def test_maps_kind_checks_shapes_at_build_time(tmp_path):
    model = distiller(tmp_path, {"loss": "nst", "student_layer": "layer1", "teacher_layer": "layer3"})
    assert step(model).per_sample["term_nst"].shape == (8,)
    with pytest.raises(ConfigError, match=r"distill.terms.0: the loss needs \(C, H, W\) maps"):
        distiller(tmp_path, {"loss": "nst", "student_layer": "pool", "teacher_layer": "layer3"})


def test_crd_memory_keyed_by_instance_ids(tmp_path):
    model = distiller(tmp_path, {"loss": "crd", "params": {"negatives": 32, "feat_dim": 16}})
    head = model.terms[0].adapter
    assert model.wants_ids and head.negatives == 32
    n = len(head.ids)
    assert head.memory_student.shape == (n, 16) and bool((head.z < 0).all())
    assert abs(float(head.memory_teacher.abs().max())) <= 1 / math.sqrt(16 / 3)
    ids = head.ids[torch.tensor([5, 0, 17, 3])]
    rows = head.rows(ids)
    assert rows.tolist() == [5, 0, 17, 3]
    contrast = head.contrast_rows(rows)
    assert contrast.shape == (4, 33) and bool((contrast[:, 1:] != rows.unsqueeze(1)).all())
    before = head.memory_student.clone()
    out = step(model, ids=ids, batch=4)
    z = head.z.clone()
    assert bool((z > 0).all())  # fixed on the first batch ...
    changed = (head.memory_student != before).any(dim=1)
    assert changed.nonzero().flatten().tolist() == [0, 3, 5, 17]  # ... and only the batch's rows move
    assert torch.allclose(head.memory_student[rows].norm(dim=1), torch.ones(4))
    out.total.backward()
    assert head.embed_teacher.weight.grad is not None and head.embed_student.weight.grad is not None
    step(model, ids=ids, batch=4)
    assert torch.equal(head.z, z)  # ... and not recomputed
    assert {"terms.0.adapter.memory_student", "terms.0.adapter.z"} <= set(model.state_dict())
    with pytest.raises(ConfigError, match="outside the training split"):
        step(model, ids=torch.tensor([10**9] * 4), batch=4)
    assert distiller(tmp_path, {"loss": "crd"}).terms[0].adapter.negatives == n - 1  # at most N − 1


@pytest.mark.slow
def test_crd_and_reviewkd_train_end_to_end_and_record_each_instance(tmp_path, make_raw):
    from kd_engine.store import open_run
    from kd_engine.run import train

    raw = make_raw({"epochs": 1, "distill.terms": [
        {"loss": "kd", "params": {"temperature": 4.0, "standardize": True}},
        {"loss": "crd", "weight": 0.8, "params": {"negatives": 64, "feat_dim": 16}},
        {"loss": "reviewkd", "student_layer": "layer2,layer3", "teacher_layer": "layer2,layer3",
         "params": {"mid_channels": 8}}]})
    run_dir = train(validate(raw), distributed=False)
    frame = open_run(run_dir).instances(split="train")
    for column in ("term_kd", "term_crd", "term_reviewkd"):
        assert frame[column].notna().all() and (frame[column] != 0).any()
    state = torch.load(run_dir / "checkpoints" / "state.pt", map_location="cpu", weights_only=True)
    assert "terms.1.adapter.memory_teacher" in state["distiller"]


def test_owned_modules_resume_from_the_distiller_state(tmp_path):
    """What the loop checkpoints (the distiller's state minus the teacher) restores memory, Z and heads."""
    term = {"loss": "crd", "params": {"negatives": 16, "feat_dim": 8}}
    model = distiller(tmp_path, term)
    head = model.terms[0].adapter
    step(model, ids=head.ids[:4], batch=4)
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("teacher.")}
    fresh = distiller(tmp_path, term)
    assert not torch.equal(fresh.terms[0].adapter.memory_student, head.memory_student)
    fresh.load_state_dict(state, strict=False)
    for name in ("memory_student", "memory_teacher", "z"):
        assert torch.equal(getattr(fresh.terms[0].adapter, name), getattr(head, name))
    assert torch.equal(fresh.terms[0].adapter.embed_teacher.weight, head.embed_teacher.weight)
