"""A shortened run of the README's demo: if a change breaks vision, this fails."""

import json

import pytest
import torch

from mmcaption.demo import run_demo, scalar_series


@pytest.mark.slow
def test_shortened_demo_sees_clearly_better_than_blind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = run_demo([
        # 800 of the README run's 3,000 images and the same epochs, on backbones pretrained for a quarter to a half
        # as long (150 LM and 700 CLIP steps; the backbones were most of this test's time in CI). Measured alone at
        # one thread, as a CI worker runs it: 5m29s, seeing beating blind by 0.42 on shape, 0.39 on multiple
        # choice and 0.24 on exact match (the README run: 0.82, 0.70, 0.70)
        "--train_images", "800", "--val_images", "60", "--language_steps", "150", "--clip_steps", "700",
        "--trainer.enable_progress_bar", "false", "--root", "my_demo",  # not the configs' demo_data/: both stages follow it
    ])
    assert (tmp_path / "my_demo" / "meta.json").is_file() and not (tmp_path / "demo_data").exists()
    captions, choices = report["captions"], report["multiple_choice"]
    # seeing beats the blind control (other images' features) by a clear margin, and blind sits near chance
    for attribute in ("colour", "shape"):
        assert captions["accuracy"][attribute] >= captions["blind"][attribute] + 0.3, captions
        assert abs(captions["blind"][attribute] - captions["chance"][attribute]) <= 0.2, captions
    assert choices["likelihood"] >= choices["likelihood_blind"] + 0.2, choices
    # letters by generation have their blind control too: another image's features do no better than chance
    # (this short run often answers no letter at all, so it may do worse)
    assert choices["generation_blind"] <= choices["chance"] + 0.15, choices
    assert report["answers"]["exact_match"] >= report["answers"]["blind"] + 0.15, report["answers"]
    # the curve's steps are the steps done, as the console's "validation at step 50" says them (they were 49, 99, ...)
    assert report["last_logged_step"]["from caption"] % 50 == 0, report["last_logged_step"]

    # both stages learned, the hand-off happened, and the report files are there
    for stage in ("caption", "instruct"):
        losses = scalar_series(report["logs"][stage], "train/loss")
        assert losses[-1][1] < losses[0][1], (stage, losses[0], losses[-1])
    instruct = torch.load(tmp_path / "checkpoints" / "demo-instruct" / "last.ckpt", weights_only=True)
    assert instruct["init_from"]["path"] == str((tmp_path / report["checkpoints"]["caption"]).resolve())
    assert (tmp_path / "demo_report" / "examples.png").stat().st_size > 1000
    assert json.loads((tmp_path / "demo_report" / "report.json").read_text())["captions"]["images"] == 60


def test_the_tiny_clip_sees_exactly_what_the_image_processor_gives():
    import random

    from mmcaption.demo.synthetic import draw_scene, random_scene
    from mmcaption.demo.tiny import build_vision_model, drawn_pixel_values

    _, processor = build_vision_model()
    rng = random.Random(0)
    images = [draw_scene(random_scene(rng), 64, rng) for _ in range(8)]
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(drawn_pixel_values(images, processor), expected, atol=1e-6)


def test_language_pretraining_packs_sequences_without_letting_them_see_each_other():
    from mmcaption.collate import collate
    from mmcaption.demo.tiny import build_language_model, packed_batch

    model = build_language_model(vocab_size=50, eos_token_id=0).eval()
    sequences = [[0, 5, 9, 12, 7, 0], [0, 3, 0], [0, 44, 2, 8, 0]]
    packed = packed_batch(sequences)
    assert packed["input_ids"].shape == (1, sum(map(len, sequences)))  # no padding
    with torch.no_grad():
        logits = model(**packed).logits[0]
        start = 0
        for ids in sequences:  # each sequence's logits are those it has alone: no attention across sequences
            alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            assert torch.allclose(logits[start:start + len(ids)], alone, atol=1e-5)
            start += len(ids)
        # and the loss is the padded batch's: the same tokens predicted, none across a boundary
        padded = collate([{"input_ids": torch.tensor(s), "labels": torch.tensor(s)} for s in sequences], pad_token_id=0)
        assert model(**packed).loss == pytest.approx(model(**padded).loss.item(), rel=1e-5)


def test_pretraining_in_a_log_file_says_how_far_it_is(capsys):
    # a logged demo (`mmcaption-demo > demo.log`) sat silent through the backbones' pretraining: 18 minutes on a busy machine
    from mmcaption.demo.tiny import steps_bar

    assert list(steps_bar(3, "tiny CLIP: contrastive pretraining", every_seconds=0.0)) == [0, 1, 2]
    assert capsys.readouterr().out.splitlines() == [f"  tiny CLIP: contrastive pretraining: step {n}/3" for n in (1, 2, 3)]
