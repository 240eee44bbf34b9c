"""The digit–caption generator, the two-tower model and the cached CLIP stand-in teacher."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_engine.data import build_data
from kd_engine.data.captions import VOCAB, caption_text, caption_tokens, class_prompts, render
from kd_engine.data.digits import _load
from kd_engine.errors import ConfigError
from kd_engine.config import stable_hash
from kd_engine.parts.clip_teacher import cached_clip_teacher, teacher_identity, class_prompt_embeddings, teacher_losses, zero_shot_logits

TINY = {"epochs": 1, "image_dim": 16, "image_depth": 1, "image_heads": 2, "text_dim": 16, "text_depth": 1,
        "text_heads": 2, "batch": 256}


def _bundle(**params):
    return build_data(SimpleNamespace(name="digit_captions", params=params, split_seed=0), 0)


def test_captions_name_the_rendered_attributes_and_hold_out_images():
    b = _bundle()
    assert len(VOCAB) == 19 and b.input_shape == (1, 16, 16)
    assert len(b.train) + len(b.val) + len(b.test) == 2 * 1797
    for split in (b.train, b.val, b.test):  # token = attribute, per the caption layout
        assert torch.equal(split.tokens[:, 0], split.y)
        assert torch.equal(split.tokens[:, 1:] - torch.tensor([10, 13, 16]), split.attributes)
    source = {name: set((getattr(b, name).ids // 2).tolist()) for name in ("train", "val", "test")}
    assert not source["train"] & source["test"] and not source["val"] & source["test"]  # images, not pairs
    digit = _load()[0][5, 0]
    plain = render(digit, 1, 1, 1)
    assert render(digit, 0, 1, 1).sum() < plain.sum() < render(digit, 2, 1, 1).sum()  # thin < normal < thick
    assert np.array_equal(render(digit, 1, 2, 1)[:, 2:], plain[:, :-2])  # right = shifted 2 px
    assert caption_text(caption_tokens(3, 0, 2, 1)) == "3 thin right rot0"
    assert class_prompts()[7].tolist() == [7, 11, 14, 17]
    with pytest.raises(ConfigError, match="data.params.pairs_per_image"):
        _bundle(pairs_per_image=0)


def test_cached_teacher_trains_once_then_loads_the_same_weights(tmp_path):
    teacher, path = cached_clip_teacher(tmp_path, **TINY)
    again, path2 = cached_clip_teacher(tmp_path, **TINY)
    assert path == path2 and len(teacher_losses(path)) == 1
    for (name, a), (_, b) in zip(teacher.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    x = _bundle().test.x[:5]
    img = teacher.encode_image(x)
    assert img.shape == (5, 32) and torch.allclose(img.norm(dim=1), torch.ones(5))
    prompts = class_prompt_embeddings(teacher)
    assert prompts.shape == (10, 32)
    assert torch.allclose(zero_shot_logits(teacher, x), img @ prompts.T)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert stable_hash(teacher_identity(**{**TINY, "seed": 1})) not in path  # new settings, new file
    assert stable_hash(teacher_identity(**TINY)) in path
