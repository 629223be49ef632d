import torch

from mmcaption.collate import IGNORE_INDEX, caption_sample, collate

BOS = EOS = PAD = 0  # as Phi-2: one <|endoftext|> token plays all three roles


def test_caption_sample_supervises_the_caption_and_its_end_only():
    input_ids, labels = caption_sample([5, 6, 7], BOS, EOS, prompt_ids=[9, 9], max_length=16)
    assert input_ids.tolist() == [BOS, 9, 9, 5, 6, 7, EOS]
    assert labels.tolist() == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 5, 6, 7, EOS]


def test_long_caption_is_cut_but_keeps_its_end_of_text():
    input_ids, labels = caption_sample(list(range(10, 30)), BOS, EOS, prompt_ids=[], max_length=8)
    assert len(input_ids) == 8
    assert input_ids[-1] == EOS and labels[-1] == EOS


def test_padding_is_masked_by_position_and_the_end_of_text_is_kept():
    short = caption_sample([5], BOS, EOS, [], 16)
    long = caption_sample([5, 6, 7, 8], BOS, EOS, [], 16)
    batch = collate(
        [
            {"input_ids": short[0], "labels": short[1], "pixel_values": torch.zeros(3, 4, 4)},
            {"input_ids": long[0], "labels": long[1], "pixel_values": torch.ones(3, 4, 4)},
        ],
        pad_token_id=PAD,
    )
    assert batch["input_ids"].tolist() == [[BOS, 5, EOS, PAD, PAD, PAD], [BOS, 5, 6, 7, 8, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    # the pad id equals the end-of-text id: the first one is a target, the padding is not
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 5, EOS, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, 5, 6, 7, 8, EOS],
    ]
    assert batch["pixel_values"].shape == (2, 3, 4, 4)


def test_left_padding_for_generation():
    batch = collate([{"input_ids": torch.tensor([1, 2, 3])}, {"input_ids": torch.tensor([4])}], 0, padding_side="left")
    assert batch["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert "labels" not in batch
