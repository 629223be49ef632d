import hashlib

from mmcaption.demo import prepare_demo_assets
from mmcaption.demo.scoring import caption_accuracy, caption_attributes
from mmcaption.demo.synthetic import Scene, captions_for, questions_for
from mmcaption.evaluation.answers import exact_match


def test_every_reference_caption_names_every_attribute():
    import random

    rng = random.Random(0)
    scenes = [Scene("red", "circle", "left"), Scene("blue", "square", "center", count=3),
              Scene("green", "triangle", "center", other_colour="white", other_shape="circle", relation="above")]
    for scene in scenes:
        assert caption_accuracy([scene] * 6, captions_for(scene, rng, n=6))["all"] == 1.0, scene


def test_wrong_missing_or_extra_attributes_are_wrong():
    single = Scene("red", "circle", "left")
    assert caption_attributes(single, "a red circle on the right") == {"colour": True, "shape": True, "position": False}
    assert caption_attributes(single, "a red and blue circle on the left")["colour"] is False
    assert caption_attributes(single, "a circle on the left")["colour"] is False
    count = Scene("blue", "square", "center", count=2)
    assert caption_attributes(count, "a picture of two blue squares")["count"] is True
    assert caption_attributes(count, "three blue squares")["count"] is False
    pair = Scene("green", "triangle", "center", other_colour="white", other_shape="circle", relation="left of")
    assert caption_attributes(pair, "a white circle is right of a green triangle")["relation"] is True
    assert caption_attributes(pair, "a white circle is left of a green triangle")["relation"] is False


def test_exact_match_ignores_case_and_punctuation():
    assert exact_match(["The circle is red.", "blue"], ["the circle is red", "red"]) == 0.5


def test_questions_cover_the_scene():
    import random

    qa = questions_for(Scene("red", "circle", "left"), random.Random(0))
    assert {attribute for attribute, _, _ in qa} == {"colour", "shape", "position", "count"}


def test_the_demos_held_out_images_are_none_of_its_training_images(tmp_path):
    # its few scenes come up again with the same placement: 20 of the 200 held-out images were training images
    root = prepare_demo_assets(tmp_path / "demo_data", pretrain_steps=0, clip_steps=0)
    trained = {hashlib.sha256(path.read_bytes()).digest() for path in (root / "coco" / "train2017").iterdir()}
    held_out = [hashlib.sha256(path.read_bytes()).digest() for path in (root / "coco" / "val2017").iterdir()]
    assert len(trained) > 2000 and len(held_out) == 200
    assert not trained.intersection(held_out)
