"""Streaming splits (too large for memory) read through a DataLoader: the same plan as the
in-memory path, batches and augmentation that depend only on (seed, epoch) whatever the number of
workers, evaluation through the eval transform, and methods that need the images in memory refuse
a streamed split with one line."""
from __future__ import annotations

import pytest
import torch

from kd_engine.config import DataConfig, validate
from kd_engine.data import build_data
from kd_engine.data.base import ItemInstanceDataset, TensorInstanceDataset
from kd_engine.data.loader import LoaderSettings, Loaders, epoch_plan, require_in_memory, stream_dataset
from kd_engine.errors import ConfigError, DataError
from kd_engine.trainers.evaluate import batches, probe_inputs


def lazy_fake(train_size=40, augment="cifar") -> DataConfig:
    return DataConfig(name="fakedata", augment=augment, val_fraction=0.2,
                      params={"train_size": train_size, "test_size": 8, "num_classes": 4, "memory_mb": 0.0001})


def epoch_batches(split, epoch, workers, batch_size=8, rank=0, world=1):
    loaders = Loaders(LoaderSettings(num_workers=workers), seed=3, rank=rank, world=world)
    try:
        return [tuple(t.clone() for t in b) for b in loaders.train(split, epoch, batch_size)]
    finally:
        loaders.close()


def test_plan_is_the_in_memory_order_split_by_rank():
    whole = epoch_plan(10, seed=3, epoch=1, batch_size=4)
    order = torch.cat([p for p, _ in whole])
    assert sorted(order.tolist()) == list(range(10)) and [len(p) for p, _ in whole] == [4, 3, 3]
    assert torch.equal(order, torch.cat([p for p, _ in epoch_plan(10, 3, 1, 4)]))  # a function of (seed, epoch)
    assert not torch.equal(order, torch.cat([p for p, _ in epoch_plan(10, 3, 2, 4)]))
    ranks = [epoch_plan(10, 3, 1, 2, rank=r, world=3) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # every rank steps the same number of times
    kept = torch.cat([p[k] for r in ranks for p, k in r])
    padded = torch.cat([p[~k] for r in ranks for p, k in r])
    assert sorted(kept.tolist()) == list(range(10)) and len(padded) == 2  # 12 slots, 2 of them padding


def test_streamed_batches_follow_the_plan_and_ignore_the_worker_count():
    train = build_data(lazy_fake(), 0).train
    assert isinstance(train, ItemInstanceDataset)
    one, two = epoch_batches(train, 1, workers=0), epoch_batches(train, 1, workers=2)
    plan = epoch_plan(len(train), 3, 1, 8)
    assert [b[2].tolist() for b in one] == [train.ids[p].tolist() for p, _ in plan]
    for a, b in zip(one, two):  # same ids, labels and the very same augmented pixels
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    again = epoch_batches(train, 1, workers=0)
    assert all(torch.equal(u, v) for a, b in zip(one, again) for u, v in zip(a, b))
    other = epoch_batches(train, 2, workers=0)
    x1 = torch.cat([b[0] for b in one])[torch.cat([b[2] for b in one]).argsort()]
    x2 = torch.cat([b[0] for b in other])[torch.cat([b[2] for b in other]).argsort()]
    assert not torch.equal(x1, x2)  # another epoch, other crops and flips of the same images
    eval_x = torch.stack([train.eval_item(i)[0] for i in range(len(train))])
    assert not torch.equal(x1, eval_x[train.ids.argsort()])  # the training items are augmented


def test_streaming_leaves_the_training_random_stream_alone():
    train = build_data(lazy_fake(), 0).train
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    epoch_batches(train, 0, workers=0)
    assert torch.equal(torch.rand(3), expected)


def test_ddp_shares_mark_padding_and_cover_every_item_once():
    train = build_data(lazy_fake(train_size=23), 0).train
    n = len(train)
    world = next(w for w in (3, 4, 5) if n % w)  # a world size that needs padding
    shares = [epoch_batches(train, 0, workers=0, batch_size=4, rank=r, world=world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    kept = torch.cat([b[2][b[3]] for s in shares for b in s])
    assert sorted(kept.tolist()) == sorted(train.ids.tolist())
    assert sum(int((~b[3]).sum()) for s in shares for b in s) == (-n) % world > 0


def test_evaluation_and_probe_of_a_lazy_split_are_not_augmented():
    train = build_data(lazy_fake(), 0).train
    expected = torch.stack([train.eval_item(i)[0] for i in range(len(train))])
    for workers in (0, 2):
        loaders = Loaders(LoaderSettings(num_workers=workers))
        parts = list(batches(train, 7, loaders))
        assert torch.equal(torch.cat([p[0] for p in parts]), expected)
        assert torch.equal(torch.cat([p[2] for p in parts]), train.ids)
        x, ids = probe_inputs(train, 5, loaders)
        assert torch.equal(x, expected[:5]) and torch.equal(ids, train.ids[:5])
    augmented = torch.stack([train[i][0] for i in range(len(train))])
    assert not torch.equal(augmented, expected)  # so the equality above is not vacuous


def test_in_memory_splits_keep_the_fast_path():
    eager = build_data(DataConfig(name="fakedata", params={"train_size": 20, "test_size": 4, "num_classes": 2}), 0)
    assert isinstance(eager.train, TensorInstanceDataset)
    x, ids = probe_inputs(eager.val, 3)
    assert torch.equal(x, eager.val.x[:3]) and torch.equal(ids, eager.val.ids[:3])


def test_a_users_dataset_streams_with_its_labels_ids_and_sources():
    images = torch.arange(6 * 4, dtype=torch.float32).view(6, 1, 2, 2)
    dataset = torch.utils.data.TensorDataset(images, torch.tensor([0, 1, 0, 1, 1, 0]))
    split = stream_dataset(dataset, name="mine", transform=lambda x: x + 100)
    assert split.y.tolist() == [0, 1, 0, 1, 1, 0] and split.ids.tolist() == list(range(6))
    assert split.sources([4]) == ["mine[4]"]
    assert torch.equal(split[2][0], images[2] + 100) and torch.equal(split.eval_item(2)[0], images[2])
    with pytest.raises(DataError, match="unique"):
        stream_dataset(dataset, ids=[0, 0, 1, 2, 3, 4])


def test_methods_that_need_images_in_memory_refuse_a_streamed_split():
    train = build_data(lazy_fake(), 0).train
    with pytest.raises(DataError) as err:
        require_in_memory(train, "method 'memkd'")
    assert "\n" not in str(err.value) and "memkd" in str(err.value) and "data.params.memory_mb" in str(err.value)
    require_in_memory(build_data(DataConfig(name="digits"), 0).train, "anything")  # in memory: fine


def test_loader_settings_are_checked_and_do_not_change_the_teacher_cache():
    from kd_engine.cache import teacher_cache_path
    from tests.conftest import digits_raw

    with pytest.raises(ConfigError, match="data.loader.num_workers"):
        validate(digits_raw("runs", "cache", {"data.loader": {"num_workers": -1}}))
    with pytest.raises(ConfigError, match="data.loader.prefetch_factor"):
        validate(digits_raw("runs", "cache", {"data.loader": {"prefetch_factor": 0}}))
    plain = validate(digits_raw("runs", "cache"))
    workers = validate(digits_raw("runs", "cache", {"data.loader": {"num_workers": 4, "pin_memory": False}}))
    assert teacher_cache_path(plain) == teacher_cache_path(workers)
    assert LoaderSettings.of(workers.data) == LoaderSettings(4, False, True, 2)
    assert LoaderSettings.of(plain.data) == LoaderSettings()
