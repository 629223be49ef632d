import os
import shutil
import unicodedata

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


def test_each_group_is_scored_on_its_own_images_and_spice_runs_once_for_all(monkeypatch):
    # nocaps' domains, as its evaluation scores them: each on its own images (CIDEr's document frequencies from them, not
    # from the whole split), an image of no group in the whole only; SPICE (a Java run loading its models, a minute on
    # a real split) once, an image's SPICE its own and a group's their mean, as SPICE's own average is
    runs = []

    class OwnSpice:  # SPICE's models are not installed offline: a scorer that gives image k the score k / 10
        def compute_score(self, refs, preds):
            runs.append(sorted(refs))
            return sum(k / 10 for k in refs) / len(refs), [{"All": {"f": k / 10}} for k in sorted(refs)]

    monkeypatch.setattr(caption_metrics.spice_tool, "Spice", OwnSpice)
    predictions, references = {**PREDICTIONS, 4: "a green square"}, {**REFERENCES, 4: ["a green square", "one green box"]}
    overall, by_group = caption_metrics.grouped_caption_scores(
        predictions, references, {1: "in-domain", 3: "near-domain", 4: "near-domain"}, spice=True)
    assert runs == [[1, 2, 3, 4]] and overall["SPICE"] == pytest.approx(0.25)
    assert list(by_group) == ["in-domain", "near-domain"] and by_group["near-domain"]["images"] == 2
    assert by_group["near-domain"]["SPICE"] == pytest.approx(0.35) and by_group["in-domain"]["SPICE"] == pytest.approx(0.1)
    alone = caption_scores({k: predictions[k] for k in (3, 4)}, {k: references[k] for k in (3, 4)}, spice=False)
    assert {name: value for name, value in by_group["near-domain"].items() if name not in ("SPICE", "images")} == alone
    assert alone["CIDEr"] != pytest.approx(overall["CIDEr"])  # (not the whole split's numbers)


@pytest.mark.skipif(not caption_metrics.java_available(), reason="METEOR and the PTB tokenizer need Java")
def test_scores_of_a_hand_made_set_equal_the_reference_implementation_numbers():
    """Numbers printed by pycocoevalcap 1.2's own scorers (PTB tokenizer, Java 17) for this set."""
    scores = caption_scores({k: PREDICTIONS[k] for k in (1, 2)}, {k: REFERENCES[k] for k in (1, 2)})
    assert scores["BLEU-4"] == pytest.approx(0.883583645094228, abs=1e-9)
    assert scores["METEOR"] == pytest.approx(0.5634537451723508, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(0.8333333333333333, abs=1e-9)
    assert scores["CIDEr"] == pytest.approx(5.910718537634697, abs=1e-9)


def test_the_same_words_in_another_unicode_form_or_full_width_score_as_the_same_words():
    # a Vietnamese reference in NFD (as macOS writes it) against the NFC prediction: BLEU-4 0, METEOR 0.04; full-width
    # Latin against ASCII: 0 on every metric
    nfc = "một con mèo đỏ ngồi trên ghế"
    references = {1: [unicodedata.normalize("NFD", nfc)], 2: ["ａ ｒｅｄ ｂａｌｌ ｏｎ ｔｈｅ ｇｒａｓｓ"]}
    scores = caption_scores({1: nfc, 2: "a red ball on the grass"}, references)
    assert scores["BLEU-4"] == pytest.approx(1.0) and scores["ROUGE-L"] == pytest.approx(1.0)


@pytest.mark.skipif(not caption_metrics.java_available(), reason="METEOR needs Java")
def test_meteor_scores_the_same_under_a_decimal_comma_locale(monkeypatch):
    """Java takes its locale from LANG: on a German or French machine METEOR's scanner read "0.5" as no number, and
    training died at its first validation without a checkpoint. JAVA_TOOL_OPTIONS sets that default locale here, whichever
    locales this machine has (the command line's own settings come after it)."""
    monkeypatch.setenv("JAVA_TOOL_OPTIONS", "-Duser.language=de -Duser.country=DE")
    caption_metrics.close_meteor()  # a Java started before has the locale it had
    try:
        scores = caption_scores({k: PREDICTIONS[k] for k in (1, 2)}, {k: REFERENCES[k] for k in (1, 2)})
    finally:
        caption_metrics.close_meteor()
    assert scores["METEOR"] == pytest.approx(0.5634537451723508, abs=1e-6)


def test_plain_tokenizer_without_java_agrees_with_ptb_on_plain_captions(monkeypatch):
    with_java = caption_metrics.tokenize(REFERENCES) if caption_metrics.java_available() else None
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    plain = caption_metrics.tokenize(REFERENCES)
    assert plain[3][0] == "a yellow triangle above a green square"
    if with_java is not None:
        assert plain == with_java
    assert "METEOR" not in caption_scores(PREDICTIONS, REFERENCES)


@pytest.mark.skipif(not caption_metrics.java_available(), reason="the PTB tokenizer needs Java")
def test_the_ptb_tokenizer_gives_what_pycocoevalcaps_gives_with_its_file_outside_a_read_only_install():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = {1: ["A man's bike -- parked (near) the café...", "Two dogs; one \"brown\", one white!"], 2: ["a 2-door car?"]}
    theirs = PTBTokenizer().tokenize({key: [{"caption": c} for c in values] for key, values in captions.items()})
    assert caption_metrics.tokenize(captions) == theirs


def test_the_tokenizers_file_is_written_where_the_user_may_write(fake_java):
    # pycocoevalcap writes it into its own package folder: a shared, read-only install failed every validation
    from pycocoevalcap.tokenizer import ptbtokenizer

    caption_metrics.tokenize(REFERENCES)
    (line,) = fake_java.read_text().splitlines()
    written = line.split(" ", 2)[2]
    assert os.path.isabs(written) and not written.startswith(os.path.dirname(os.path.dirname(ptbtokenizer.__file__)))
    assert not os.path.exists(written)  # and removed after


def test_chinese_and_japanese_captions_are_scored_a_character_a_token_and_other_scripts_by_their_words(monkeypatch):
    # without spaces a whole caption was one token: an exact match scored BLEU-4 0.00003, one word changed scored 0
    references = {1: ["一个红色的三角形在右边"], 2: ["赤い丸が左にある"], 3: ["कुत्ता घास पर है"]}
    same = caption_scores({1: "一个红色的三角形在右边", 2: "赤い丸が左にある", 3: "कुत्ता घास पर है"}, references, spice=False)
    assert same["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    near = caption_scores({1: "一个红色的圆形在右边", 2: "赤い丸が右にある", 3: "कुत्ता घास पर है"}, references, spice=False)
    assert 0.3 < near["BLEU-1"] < 1 and near["CIDEr"] > 1
    for java in (True, False):  # the fallback kept Hindi's vowel signs apart: "कुत्ता" was 6 tokens
        monkeypatch.setattr(caption_metrics, "java_available", lambda java=java: java and shutil.which("java") is not None)
        assert caption_metrics.tokenize({3: ["कुत्ता घास पर है।"]})[3][0].split()[:4] == ["कुत्ता", "घास", "पर", "है"]
        assert caption_metrics.tokenize({1: ["一个 红色。"]})[1][0].split()[:4] == ["一", "个", "红", "色"]


def test_mismatched_keys_are_refused():
    with pytest.raises(ValueError, match="differ in 1 keys"):
        caption_scores({1: "a"}, {1: ["a"], 2: ["b"]})


FAKE_JAVA = '''#!{python}
"""java for pycocoevalcap's tools, as they talk to it: PTBTokenizer reads a file, METEOR reads stdin lines."""
import os, sys, time
with open(os.environ["FAKE_JAVA_LOG"], "a") as log:
    log.write(f"{{os.getpid()}} {{os.getsid(0)}} {{sys.argv[-1]}}\\n")
if "edu.stanford.nlp.process.PTBTokenizer" in sys.argv:
    print(open(sys.argv[-1]).read().lower())
    sys.exit(0)
for line in sys.stdin:
    if line.startswith("SCORE"):
        print("1 1 1 1 1", flush=True)
    elif line.startswith("EVAL"):
        if os.environ.get("FAKE_JAVA_SLOW"):
            time.sleep(600)  # a long METEOR run on 5,000 images
        for _ in range(line.count("|||") + 1):
            print("0.5", flush=True)
'''


@pytest.fixture
def fake_java(tmp_path, monkeypatch):
    """A `java` first on PATH that logs each start's process id and session id."""
    import sys

    folder = tmp_path / "bin"
    folder.mkdir()
    java = folder / "java"
    java.write_text(FAKE_JAVA.format(python=sys.executable))
    java.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_JAVA_LOG", str(tmp_path / "java.log"))
    return tmp_path / "java.log"


def test_the_java_scorers_run_outside_the_terminals_process_group(fake_java):
    # A terminal's Ctrl-C goes to the whole foreground process group: METEOR's Java died midway, its reader failed
    # on an empty line with its lock held, and fit hung where it should have saved its checkpoint
    scores = caption_scores(PREDICTIONS, REFERENCES, spice=False)
    assert scores["METEOR"] == 0.5  # the fake's score: the tools did run through it
    sessions = [int(line.split()[1]) for line in fake_java.read_text().splitlines()]
    assert len(sessions) == 3 and os.getsid(0) not in sessions  # two tokenizer runs and METEOR, each in its own session


def test_an_interrupted_meteor_score_ends_its_java_and_does_not_hang(fake_java, monkeypatch):
    # a second Ctrl-C (or validate's SIGTERM) interrupts the score: pycocoevalcap's Meteor.__del__ then waited
    # forever for the lock the score held, with Java still running
    import subprocess
    import sys

    monkeypatch.setenv("FAKE_JAVA_SLOW", "1")
    script = (
        "import gc, signal\n"
        "from mmcaption.evaluation.caption_metrics import caption_scores\n"
        "signal.signal(signal.SIGALRM, signal.default_int_handler)\n"
        "signal.alarm(3)\n"
        "try:\n"
        f"    caption_scores({PREDICTIONS!r}, {REFERENCES!r}, spice=False)\n"
        "except KeyboardInterrupt:\n"
        "    gc.collect()\n"
        "    print('interrupted')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "interrupted", result.stderr[-2000:]
    meteor_pid = int(fake_java.read_text().splitlines()[-1].split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(meteor_pid, 0)  # METEOR's Java ended with the score, not left running


def test_meteors_java_is_started_once_for_every_score_and_ends_with_the_process(fake_java):
    # each validation started METEOR's Java again: ~10 s of CPU loading its paraphrase tables, every time
    import subprocess
    import sys

    script = (
        "import os\n"
        "from mmcaption.evaluation import caption_metrics\n"
        f"scores = [caption_metrics.caption_scores({PREDICTIONS!r}, {REFERENCES!r}, spice=False)['METEOR'] for _ in range(3)]\n"
        "os.kill(caption_metrics._meteor.meteor_p.pid, 9)  # it died (the machine's OOM killer, say): started again\n"
        "caption_metrics._meteor.meteor_p.wait()\n"
        f"scores.append(caption_metrics.caption_scores({PREDICTIONS!r}, {REFERENCES!r}, spice=False)['METEOR'])\n"
        "print(scores)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[0.5, 0.5, 0.5, 0.5]", result.stderr[-2000:]
    starts = [line.split() for line in fake_java.read_text().splitlines()]
    assert len(starts) == 4 * 2 + 2  # two tokenizer runs a score, and METEOR twice: at the first score and after it died
    for pid in {int(pid) for pid, *_ in starts}:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # none left running after the process ended


def test_chinese_punctuation_is_dropped_as_the_ptb_tokenizer_drops_ascii_punctuation():
    # a trailing "。" was a token of its own: an exact caption with it scored BLEU-4 0.913, CIDEr 9.58
    assert caption_metrics.tokenize({1: ["一只狗，在跑。"]})[1][0] == "一 只 狗 在 跑"
    references = {1: ["一只狗在草地上跑"], 2: ["两只猫在沙发上睡觉"]}
    scores = caption_scores({1: "一只狗在草地上跑。", 2: "两只猫在沙发上睡觉！"}, references, spice=False)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


def test_arabic_and_devanagari_punctuation_is_dropped_as_other_scripts_punctuation_is(monkeypatch):
    # "،" "؟" and "।" were tokens of their own: an exact caption scored BLEU-4 0 against one with its own comma
    for java in (True, False):
        monkeypatch.setattr(caption_metrics, "java_available", lambda java=java: java and shutil.which("java") is not None)
        assert caption_metrics.tokenize({1: ["قطة، تجلس على الطاولة؟"], 2: ["एक बिल्ली मेज़ पर बैठी है।"]}) == {
            1: ["قطة تجلس على الطاولة"], 2: ["एक बिल्ली मेज़ पर बैठी है"]}, java


def test_a_line_break_inside_a_caption_scores_as_a_space_and_moves_no_reference(monkeypatch):
    # a reference with "\r\n" or U+2028 inside (COCO files keep them) ended a line in the PTB tokenizer too: every later
    # image was scored against the references of the one before, the last ones dropped (CIDEr 4.17 -> 0.18)
    captions = {0: ["a red\r\ncircle"], 1: ["a blue square"], 2: ["a green\u2028triangle", "a\x0bgreen\x0ctriangle"],
                3: ["a yellow star"]}
    expected = {0: ["a red circle"], 1: ["a blue square"], 2: ["a green triangle", "a green triangle"], 3: ["a yellow star"]}
    for java in (True, False):
        monkeypatch.setattr(caption_metrics, "java_available", lambda java=java: java and shutil.which("java") is not None)
        assert caption_metrics.tokenize(captions) == expected, java


def test_spices_parse_cache_has_a_folder_where_the_user_has_no_home(tmp_path, monkeypatch):
    # a container's user without a home (or HOME=/): "Could not determine home directory", or "permission denied: /.cache"
    # with advice about mmcaption's own folders; a run's temporary folder serves then, XDG_CACHE_HOME where it is set
    from mmcaption.evaluation.caption_metrics import _user_cache

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(blocker))  # no folder can be made there, even by root
    assert _user_cache("spice") is None
    monkeypatch.delenv("HOME")
    monkeypatch.setattr("pathlib.Path.home", lambda: (_ for _ in ()).throw(RuntimeError("Could not determine home directory")))
    assert _user_cache("spice") is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert _user_cache("spice") == str(tmp_path / "cache" / "mmcaption" / "spice")


# captions with what the PTB tokenizer treats specially, and how pycocoevalcap's PTB tokenizer (Java) writes them
PTB_WRITTEN = {
    'A sign reads "STOP" at the corner.': "a sign reads stop at the corner",
    "A “quoted” word – and — dashes (in parens) [brackets] {braces}":
        "a quoted word and dashes -lrb- in parens -rrb- -lsb- brackets -rsb- -lcb- braces -rcb-",
    "The dog’s bowl isn't full; it's empty...": "the dog 's bowl is n't full it 's empty",
    "the dogs' toys, they're here; I'm ok, we'll see. you've won, he'd go":
        "the dogs toys they 're here i 'm ok we 'll see you 've won he 'd go",
    "rock-n-roll 'single' quotes ``x''": "rock-n-roll single quotes x",
    "two people--one tall, a well-lit room - bright": "two people one tall a well-lit room bright",
    "a 3-year-old boy at 5:30 p.m. in the U.S.": "a 3-year-old boy at 5:30 p.m. in the u.s.",
    "1,000 people, 3.5 km away": "1,000 people 3.5 km away",
    "A man's hat / 50% off $5 #1": "a man 's hat / 50 % off $ 5 # 1",
    "don't can't won't": "do n't ca n't wo n't",
    "a man 's shirt": "a man 's shirt",
}


def test_without_java_captions_are_split_as_the_ptb_tokenizer_splits_them(monkeypatch):
    """The fallback kept quotes, brackets and dashes as tokens and clitics on their words: a quoted caption scored BLEU-4
    0.36 that the PTB tokenizer scores 0.90, and the README called that "slightly"."""
    captions = {i: [caption] for i, caption in enumerate(PTB_WRITTEN)}
    wanted = {i: [written] for i, written in enumerate(PTB_WRITTEN.values())}
    if shutil.which("java"):  # the table above is what the PTB tokenizer writes
        assert caption_metrics.tokenize(captions) == wanted
    monkeypatch.setattr(caption_metrics, "java_available", lambda: False)
    assert caption_metrics.tokenize(captions) == wanted
    quoted = caption_scores({1: 'a sign that says "stop" on a pole'}, {1: ['A sign that says “STOP” on a pole.']}, spice=False)
    assert quoted["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
