"""Training order: seeded shuffle, length grouping, DDP sharding."""

import numpy as np
import pytest

from mmcaption.data.sampling import LengthGroupedSampler, padding_efficiency


def mixed_lengths(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(8, 400, size=n)


def batches_of(indices, batch_size):
    return [np.asarray(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]


def test_every_sample_once_per_epoch_in_a_new_order_that_the_seed_fixes():
    lengths = mixed_lengths()
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(len(lengths)))
    assert list(LengthGroupedSampler(lengths, batch_size=16, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(len(lengths)))
    assert list(LengthGroupedSampler(lengths, batch_size=16, seed=4)) != first


def test_grouping_cuts_padding_compared_with_a_plain_shuffle():
    lengths = mixed_lengths()
    grouped = batches_of(list(LengthGroupedSampler(lengths, batch_size=16)), 16)
    plain = batches_of(list(LengthGroupedSampler(lengths, batch_size=16, group_by_length=False)), 16)
    assert padding_efficiency(lengths, grouped) > 0.9
    assert padding_efficiency(lengths, plain) < 0.7
    # the longest batch comes first, so a batch too big for memory fails at the first step
    assert lengths[grouped[0]].max() == lengths.max()


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_ranks_get_disjoint_grouped_shards_of_the_single_process_batches(world_size):
    lengths = mixed_lengths(997)
    shards = []
    for rank in range(world_size):
        sampler = LengthGroupedSampler(lengths, batch_size=8, num_replicas=world_size, rank=rank, seed=1)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    unique = [set(s) for s in shards]
    covered = set().union(*unique)
    assert covered == set(range(len(lengths)))
    # padding to equal shards repeats fewer than world_size samples; nothing else is shared
    assert sum(len(s) for s in unique) - len(covered) < world_size
    for shard in shards:
        assert padding_efficiency(lengths, batches_of(shard, 8)) > 0.85
    # step by step, the ranks' batches together are the batches of one process at world_size x 8
    one = LengthGroupedSampler(lengths, batch_size=8 * world_size, seed=1)
    one.set_epoch(2)
    for step, batch in enumerate(batches_of(list(one), 8 * world_size)[:-1]):
        together = np.concatenate([shard[step * 8:(step + 1) * 8] for shard in shards])
        assert sorted(together) == sorted(batch)
    fresh = LengthGroupedSampler(lengths, 8, num_replicas=world_size, rank=0, seed=1)
    assert list(fresh) != shards[0]  # epoch 0 is not epoch 2


def test_padding_benchmark_reports_grouped_above_shuffled_above_the_original_scripts(backbones, coco_root):
    import re
    import subprocess
    import sys

    from .conftest import REPO

    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "padding.py"), str(coco_root / "annotations" / "captions_train2017.json"),
         "--tokenizer", str(backbones[0]), "--batch_size", "16"],
        capture_output=True, text=True, check=True,
    )
    efficiency = {name: float(value) for name, value in re.findall(r"^(original scripts|mmcaption, \w+).*?\s([0-9.]+)\s+[0-9.]+x$", result.stdout, re.M)}
    assert efficiency["original scripts"] < 0.2 < efficiency["mmcaption, shuffled"] <= efficiency["mmcaption, grouped"]


def test_larger_length_groups_pad_less_and_the_data_module_passes_its_setting(backbones, coco_root):
    from mmcaption.data import CaptionDataModule

    lengths = np.random.default_rng(0).poisson(14, size=5000) + 2  # caption-like: many similar lengths
    efficiency = {}
    for groups in (5, 50, 100):
        sampler = LengthGroupedSampler(lengths, batch_size=64, seed=0, mega_batch=groups)
        efficiency[groups] = padding_efficiency(lengths, batches_of(list(sampler), 64))
    assert efficiency[5] < efficiency[50] < efficiency[100]

    language_dir, vision_dir = backbones
    datamodule = CaptionDataModule(data_dir=str(coco_root), tokenizer=str(language_dir), image_processor=str(vision_dir),
                                   batch_size=4, num_workers=0, length_group_batches=7)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.train_dataloader().sampler.mega_batch == 7
    assert datamodule.training_data()["length_group_batches"] == 7
    with pytest.raises(ValueError, match="length_group_batches must be at least 1, got 0"):
        CaptionDataModule(data_dir=str(coco_root), tokenizer=str(language_dir), image_processor=str(vision_dir), length_group_batches=0)


@pytest.mark.parametrize("world_size", [1, 2])
def test_an_optimizer_steps_samples_are_the_same_whatever_batches_they_are_cut_into(world_size):
    # a run out of memory resumes with half the batch and twice the accumulation: each step's samples must not change
    lengths = mixed_lengths(997)

    def steps(batch_size, accumulate, skip=0):
        shards = []
        for rank in range(world_size):
            sampler = LengthGroupedSampler(lengths, batch_size, num_replicas=world_size, rank=rank, seed=1, mega_batch=10,
                                           accumulate=accumulate, skip=skip, skip_epoch=2)
            sampler.set_epoch(2)
            shards.append(list(sampler))
        per_step = batch_size * accumulate
        return [sorted(np.concatenate([shard[s:s + per_step] for shard in shards]).tolist())
                for s in range(0, len(shards[0]), per_step)]

    whole = steps(16, 1)
    assert steps(8, 2) == steps(4, 4) == whole
    assert steps(8, 2, skip=5 * 16) == whole[5:]  # a resume after 5 steps: the epoch's rest, step for step
    sampler = LengthGroupedSampler(lengths, 8, accumulate=2, skip=80, skip_epoch=2)
    sampler.set_epoch(3)  # the epochs after it whole
    assert sorted(sampler) == list(range(len(lengths)))
    # grouped by the optimizer step, each of its batches still holds samples of similar length
    sampler.set_epoch(2)
    assert padding_efficiency(lengths, batches_of(list(LengthGroupedSampler(lengths, 8, accumulate=2)), 8)) > 0.85
