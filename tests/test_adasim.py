"""AdaSim (paper 14) and the shared two-view parts: the adaptive partner rule on hand-built vote
sums, the kNN vote memory, DINO's centring/sharpening, collapse indicators, seeded views."""
from __future__ import annotations

import math

import pytest
import torch

from kd_engine.config import load_config
from kd_engine.data.views import ViewSpec, multi_crop, random_view, step_generator, two_views
from kd_engine.errors import ConfigError
from kd_engine.losses.dino import dino_cross_entropy, updated_center
from kd_engine.params import read_params
from kd_engine.metrics_ssl import effective_rank, embedding_std, mean_entropy
from kd_engine.parts.knn_memory import KNNVoteMemory, adaptive_partners

NEG = float("-inf")


# -- the adaptive rule -------------------------------------------------------------------------
def test_top_vote_not_self_means_no_bootstrap():
    # row 0 is image 0, but image 2 has the larger summed similarity: the votes are unreliable
    s_sum = torch.tensor([[4.0, 1.0, 4.5, 0.0]])
    partner, reliable, _, _ = adaptive_partners(s_sum, torch.tensor([0]), k=3, zeta=0.01, history=5)
    assert partner.tolist() == [0] and reliable.tolist() == [False]


def test_reliable_votes_sample_from_softmax_over_top_k():
    # self (index 1) top-voted with 5.0, neighbour 3 at 5.0, neighbour 0 at 4.5; V = 5, zeta = 0.1
    s_sum = torch.tensor([[4.5, 5.0, 0.0, 5.0]])
    rows = torch.tensor([1])
    _, reliable, probs, candidates = adaptive_partners(s_sum, rows, k=3, zeta=0.1, history=5)
    assert reliable.tolist() == [True]
    # softmax([5, 5, 4.5] / 0.5) = softmax([10, 10, 9])
    e = [1.0, 1.0, math.exp(-1.0)]
    expected = sorted([x / sum(e) for x in e], reverse=True)
    assert torch.allclose(probs[0], torch.tensor(expected), atol=1e-6)
    assert set(candidates[0, :2].tolist()) == {1, 3} and candidates[0, 2].item() == 0
    draws = [adaptive_partners(s_sum, rows, 3, 0.1, 5, step_generator(0, s))[0].item() for s in range(400)]
    share = {j: draws.count(j) / len(draws) for j in (0, 1, 3)}
    assert abs(share[0] - expected[2]) < 0.06 and abs(share[1] - share[3]) < 0.12


def test_tiny_zeta_keeps_the_image_unless_a_neighbour_ties():
    s_sum = torch.tensor([[5.0, 4.9, 1.0], [3.0, 3.0, 2.0]])
    rows = torch.tensor([0, 1])
    partner, reliable, probs, _ = adaptive_partners(s_sum, rows, k=3, zeta=1e-4, history=5)
    assert partner[0].item() == 0 and probs[0, 0].item() == pytest.approx(1.0)
    assert reliable.tolist() == [True, True]  # row 1: a tie between the image and 0 counts as reliable
    assert probs[1, :2].tolist() == pytest.approx([0.5, 0.5])


def test_vote_memory_sums_the_history():
    mem = KNNVoteMemory(size=4, dim=2, k=2, history=2)
    mem.update(torch.tensor([0, 1, 2, 3]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]))
    q = torch.tensor([[1.0, 0.0]])
    sims = mem.similarities(q)
    assert torch.allclose(sims, torch.tensor([[1.0, 0.0, 1 / math.sqrt(2), -1.0]]), atol=1e-6)
    mem.record(torch.tensor([0]), sims)            # epoch 1: top-2 of row 0 = {0: 1.0, 2: 0.707}
    mem.end_epoch()
    mem.record(torch.tensor([0]), torch.tensor([[0.5, 0.9, NEG, NEG]]))  # epoch 2: {1: 0.9, 0: 0.5}
    mem.end_epoch()
    assert mem.full
    s = mem.vote_sums(torch.tensor([0]))
    assert torch.allclose(s, torch.tensor([[1.5, 0.9, 1 / math.sqrt(2), 0.0]]), atol=1e-6)
    mem.end_epoch()                                  # a third, empty epoch pushes out the first
    assert torch.allclose(mem.vote_sums(torch.tensor([0])), torch.tensor([[0.5, 0.9, 0.0, 0.0]]))


def test_unfilled_bank_entries_are_never_neighbours():
    mem = KNNVoteMemory(size=3, dim=2, k=2, history=1)
    mem.update(torch.tensor([1]), torch.tensor([[0.0, 2.0]]))
    sims = mem.similarities(torch.tensor([[0.0, 1.0]]))
    assert sims[0, 1].item() == pytest.approx(1.0) and torch.isinf(sims[0, [0, 2]]).all()
    mem.record(torch.tensor([0]), sims)
    assert mem.epoch_idx[0].tolist() == [1, -1]


# -- DINO: centring and sharpening -------------------------------------------------------------
def test_center_update_known_answer():
    c = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[3.0, 2.0], [1.0, 0.0]])  # batch mean [2, 1]
    assert torch.allclose(updated_center(c, t, 0.9), torch.tensor([[0.9 + 0.2, 0.1]]))


def test_centred_teacher_equal_to_center_is_uniform():
    k = 8
    t = torch.randn(3, k)
    h = dino_cross_entropy(torch.zeros(3, k), t, center=t[:1].clone().expand(1, k) * 0 + t[0], reduction="none")
    assert h[0].item() == pytest.approx(math.log(k), rel=1e-5)


def test_sharpened_teacher_is_one_hot_limit():
    s = torch.tensor([[0.3, -0.2, 0.1]])
    t = torch.tensor([[0.0, 2.0, 1.0]])
    h = dino_cross_entropy(s, t, torch.zeros(1, 3), student_temp=0.1, teacher_temp=1e-3)
    expected = -torch.log_softmax(s / 0.1, dim=1)[0, 1]
    assert h.item() == pytest.approx(expected.item(), rel=1e-5)
    # centring shifts which dimension the sharpened teacher picks
    h_c = dino_cross_entropy(s, t, torch.tensor([[0.0, 3.0, 0.0]]), student_temp=0.1, teacher_temp=1e-3)
    assert h_c.item() == pytest.approx(-torch.log_softmax(s / 0.1, dim=1)[0, 2].item(), rel=1e-5)


def test_teacher_side_has_no_gradient():
    s, t = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    dino_cross_entropy(s, t, torch.zeros(1, 4)).backward()
    assert s.grad is not None and t.grad is None


# -- collapse indicators ------------------------------------------------------------------------
def test_collapse_indicators_known_answers():
    assert embedding_std(torch.ones(16, 5)) == pytest.approx(0.0)
    assert effective_rank(torch.randn(1, 4).repeat(10, 1) * torch.arange(10.0).unsqueeze(1)) == pytest.approx(1.0, abs=1e-3)
    eye = torch.cat([torch.eye(4), -torch.eye(4)])  # centred, four equal singular values
    assert effective_rank(eye) == pytest.approx(4.0, rel=1e-4)
    assert mean_entropy(torch.full((3, 6), 1 / 6)) == pytest.approx(math.log(6))
    assert mean_entropy(torch.tensor([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(0.0, abs=1e-6)


# -- views ------------------------------------------------------------------------------------
def test_views_are_seeded_and_differ():
    x = torch.rand(6, 1, 8, 8)
    spec = ViewSpec()
    a1, a2 = two_views(x, spec, seed=3, step=7)
    b1, b2 = two_views(x, spec, seed=3, step=7)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)           # same (seed, step): bit for bit
    assert not torch.allclose(a1, a2)                              # the two views differ
    c1, _ = two_views(x, spec, seed=3, step=8)
    d1, _ = two_views(x, spec, seed=4, step=7)
    assert not torch.allclose(a1, c1) and not torch.allclose(a1, d1)
    assert a1.shape == x.shape


def test_identity_view_reproduces_the_image_and_partner_is_used():
    spec = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), rotation=0.0, noise=0.0, erase=0)
    x, p = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    assert torch.allclose(random_view(x, spec, step_generator(0, 0)), x, atol=1e-5)
    v1, v2 = two_views(x, spec, 0, 0, partner=p)
    assert torch.allclose(v1, x, atol=1e-5) and torch.allclose(v2, p, atol=1e-5)


def test_erase_and_multi_crop():
    spec = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), rotation=0.0, noise=0.0, erase=2)
    v = random_view(torch.ones(5, 1, 8, 8), spec, step_generator(1, 1))
    assert ((v == 0).flatten(1).sum(1) == 4).all()  # exactly one 2x2 square erased per image
    crops = multi_crop(torch.rand(2, 1, 8, 8), ViewSpec(), 0, 0, n_global=2, n_local=3)
    assert len(crops) == 5 and all(c.shape == (2, 1, 8, 8) for c in crops)


def test_view_and_method_params_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"distill.params.views: unknown view parameter 'blur'"):
        ViewSpec.from_params({"blur": 1})
    with pytest.raises(ConfigError, match=r"distill.params.views.scale"):
        ViewSpec.from_params({"scale": [0.5, 1.5]})
    with pytest.raises(ConfigError, match=r"distill.params: unknown parameter 'kk' for method adasim"):
        read_params({"kk": 3}, {"k": 5}, "distill.params", "method adasim")
    with pytest.raises(ConfigError, match=r"distill.params.k: expected an integer"):
        read_params({"k": "five"}, {"k": 5}, "distill.params", "method adasim")


# -- the method through the trainer ------------------------------------------------------------
def _cfg(tmp_path, *extra):
    return load_config("configs/adasim_digits.yaml",
                       ["epochs=3", "threads=1", "device=cpu", f"runs_dir={tmp_path}",
                        "distill.params.history=1", "record.eval_instances=false", *extra])


def test_bad_partner_is_a_config_error(tmp_path):
    from kd_engine.run import train

    with pytest.raises(ConfigError, match=r"distill.params.partner"):
        train(_cfg(tmp_path, "distill.params.partner=knn"), distributed=False)


@pytest.mark.parametrize("partner", ["self", "nearest", "adaptive"])
def test_adasim_trains_and_records_decisions(tmp_path, partner):
    from kd_engine.store import open_run
    from kd_engine.run import train

    run = open_run(train(_cfg(tmp_path, f"distill.params.partner={partner}"), distributed=False))
    inst = run.instances(split="train")
    for col in ("nn_used", "vote_reliable", "self_vote", "partner_vote", "partner_same_label", "knn_correct"):
        assert col in inst
    used = inst.groupby("epoch")["nn_used"].mean()
    assert used.loc[0] == 0.0                  # never before the history is full (V = 1: epoch 0)
    if partner == "self":
        assert (inst["nn_used"] == 0).all()
    if partner == "nearest":
        assert used.loc[2] == 1.0                # naive: always the nearest non-self neighbour
    if partner == "adaptive":                    # bootstrap only where the votes were reliable
        assert (inst.loc[inst["nn_used"] == 1, "vote_reliable"] == 1).all()
    keys = set(run.scalars()["key"])
    assert {"train/embedding_std", "train/teacher_entropy", "train/bootstrap_rate"} <= keys
    assert 0.0 <= run.final_metrics()["test/student_acc"] <= 1.0


def test_a_stopped_adasim_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """The kNN vote memory is part of the checkpoint: stopped after epoch 1 and resumed, the run
    ends with exactly the weights, EMA teacher and memory of an uninterrupted run."""
    from safetensors.torch import load_file

    from conftest import stop_after_epoch
    from kd_engine.run import train
    from kd_engine.trainer import StopRequested, Trainer

    reference = train(_cfg(tmp_path / "a", "distill.params.partner=adaptive"), distributed=False)
    resume_normally = stop_after_epoch(monkeypatch, Trainer, "_checkpoint", 1)
    with pytest.raises(StopRequested):
        train(_cfg(tmp_path / "b", "distill.params.partner=adaptive"), distributed=False)
    resume_normally()
    (stopped,) = (tmp_path / "b").glob("*adasim*")
    resumed = train(None, resume=stopped, distributed=False)
    a = load_file(str(reference / "checkpoints" / "student.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(reference / "checkpoints" / "state.pt", weights_only=True)["distiller"]
    sb = torch.load(resumed / "checkpoints" / "state.pt", weights_only=True)["distiller"]
    assert torch.equal(sa["_extra_state"]["memory"]["past_idx"], sb["_extra_state"]["memory"]["past_idx"])
    for key, value in sa.items():
        if key != "_extra_state":
            assert torch.equal(value, sb[key]), key
