import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from mmcaption.evaluation import caption_metrics
from mmcaption.evaluation.caption_metrics import caption_scores

REFERENCES = {
    1: ["a red circle on the left.", "there is a red circle on the left"],
    2: ["two blue squares"],
    3: ["A yellow triangle above a green square.", "a yellow triangle is above a green square"],
}
PREDICTIONS = {1: "a red circle on the left", 2: "three blue squares", 3: "a yellow triangle below a green circle"}


def test_scores_match_pycocoevalcap_run_directly():
    scores = caption_scores(PREDICTIONS, REFERENCES)
    refs = caption_metrics.tokenize(REFERENCES)
    preds = caption_metrics.tokenize({k: [v] for k, v in PREDICTIONS.items()})
    bleu = Bleu(4).compute_score(refs, preds, verbose=0)[0]
    assert [scores[f"BLEU-{n}"] for n in range(1, 5)] == pytest.approx(bleu)
    assert scores["ROUGE-L"] == pytest.approx(Rouge().compute_score(refs, preds)[0])
    assert scores["CIDEr"] == pytest.approx(Cider().compute_score(refs, preds)[0])
    if caption_metrics.java_available():  # METEOR, as pycocoevalcap runs it on PTB-tokenized captions
        from pycocoevalcap.meteor.meteor import Meteor

        assert scores["METEOR"] == pytest.approx(Meteor().compute_score(refs, preds)[0])


@pytest.mark.skipif(not caption_metrics.java_available(), reason="METEOR and the PTB tokenizer need Java")
def test_scores_of_a_hand_made_set_equal_the_reference_implementation_numbers():
    """Numbers printed by pycocoevalcap 1.2's own scorers (PTB tokenizer, Java 17) for this set."""
    scores = caption_scores({k: PREDICTIONS[k] for k in (1, 2)}, {k: REFERENCES[k] for k in (1, 2)})
    assert scores["BLEU-4"] == pytest.approx(0.883583645094228, abs=1e-9)
    assert scores["METEOR"] == pytest.approx(0.5634537451723508, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(0.8333333333333333, abs=1e-9)
    assert scores["CIDEr"] == pytest.approx(5.910718537634697, abs=1e-9)


def test_plain_tokenizer_without_java_agrees_with_ptb_on_plain_captions(monkeypatch):
    with_java = caption_metrics.tokenize(REFERENCES) if caption_metrics.java_available() else None
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    plain = caption_metrics.tokenize(REFERENCES)
    assert plain[3][0] == "a yellow triangle above a green square"
    if with_java is not None:
        assert plain == with_java
    assert "METEOR" not in caption_scores(PREDICTIONS, REFERENCES)


def test_mismatched_keys_are_refused():
    with pytest.raises(ValueError, match="differ in 1 keys"):
        caption_scores({1: "a"}, {1: ["a"], 2: ["b"]})
