"""Reading answers as the common evaluation kits do: option letters out of free text, VQA normalisation."""

import pytest

from mmcaption.evaluation.answers import exact_match, normalise_answer, parse_choice, vqa_accuracy

OPTIONS = ["blue square", "red circle", "green triangle", "yellow diamond"]


@pytest.mark.parametrize(
    ("generated", "options", "letter"),
    [
        ("B", None, "B"),
        ("(B)", None, "B"),
        ("B.", None, "B"),
        ("B)", None, "B"),
        ("[C]", None, "C"),
        ("Answer: B", None, "B"),
        ("answer: d", None, None),  # a lower-case letter is a word, not an option
        ("The answer is B", None, "B"),
        ("The answer is (C).", None, "C"),
        ("The correct option is D", None, "D"),
        ("Option A", None, "A"),
        ("B. blue square", OPTIONS, "B"),
        ("(C) green triangle", OPTIONS, "C"),
        ("C: green triangle", OPTIONS, "C"),
        ("I think it is B", None, "B"),
        ("A", None, "A"),
        ("A. blue square", OPTIONS, "A"),
        ("A red circle on the left", None, None),  # the article is not option A
        ("A red circle on the left", OPTIONS, "B"),  # ... and the option's text names B
        ("red circle", OPTIONS, "B"),
        ("The image shows a green triangle.", OPTIONS, "C"),
        ("B or C", None, None),  # ambiguous: no letter
        ("A and B", None, None),
        ("A or B", None, None),
        # a chatty model's letter A: read as B, C and D are (each was None, so an always-right model scored 0 in
        # CircularEval, where every question has A as its answer once)
        ("A is correct.", None, "A"),
        ("A is the correct answer.", OPTIONS, "A"),
        ("A would be correct", None, "A"),
        ("A because the circle is red", None, "A"),
        ("A best describes the image", OPTIONS, "A"),
        ("A seems right", None, "A"),
        ("B is correct.", None, "B"),
        ("A can of soda.", ["a bottle", "a can of soda", "a cup"], "B"),  # ... but a noun after the article is not a verb
        ("A will is on the desk.", ["a letter", "a will"], "B"),
        ("A must-see landmark.", ["a shop", "a must-see landmark"], "B"),
        ("A can be seen", None, "A"),
        ("A will work best, not B", OPTIONS, None),  # two letters named: none (the article took A, leaving B)
        ("A might work, unlike B", OPTIONS, None),
        ("Answer: A blue square", OPTIONS, "A"),  # option A's own text: A
        ("Answer: A red circle", OPTIONS, "B"),  # ... the article before option B's text: B
        ("a red circle or a blue square", OPTIONS, None),  # two options' texts: ambiguous
        ("blue", None, None),
        ("", None, None),
        ("E", OPTIONS + ["white star"], "E"),
        ("E", OPTIONS, None),  # no fifth option
        # an option's whole text, with a capital in it, is that option (each was read as the capital's option)
        ("Solution A", ["Solution B", "Solution A", "neither; their concentrations are the same"], "B"),
        ("Vitamin C", ["Vitamin A", "Vitamin C", "B12", "D"], "B"),
        ("Hopper A.", ["Hopper B", "Hopper A"], "B"),
        ("Option A is wrong; the answer is B.", OPTIONS, "B"),  # the answer stated, not the first option named
        ("(A) cat", ["dog", "cat"], "A"),  # ... but a label decides: "A" is no article there (each was read as B)
        ("A. cat", ["dog", "cat"], "A"),
        ("A. Both", ["A only", "B only", "Both", "Neither"], "A"),
        ("C. elegans", ["E. coli", "C. elegans", "S. cerevisiae"], "B"),  # ... an option's own text, label and all, is it
        ("A. Lincoln.", ["G. Washington", "A. Lincoln", "T. Jefferson"], "B"),
        ("The.", ["a", "bird"], None),  # nothing left of either once normalised: no option's text (was A)
    ],
)
def test_option_letters_are_read_as_evaluation_kits_read_them(generated, options, letter):
    assert parse_choice(generated, options) == letter


def test_vqa_normalisation():
    assert normalise_answer("Two") == normalise_answer("2") == "2"
    assert normalise_answer("The red circle.") == "red circle"
    assert normalise_answer("dont know") == "don't know"
    assert normalise_answer("yes!") == "yes"
    assert normalise_answer("10,000") == "10000"
    assert normalise_answer("left-hand side") == "left hand side"
    # as vqaEval.py: whether a mark is dropped or becomes a space is decided on the answer as given, not
    # on what the marks before it left ("!" touches no space in "x!y>!", so both become spaces)
    assert normalise_answer("x!y>!") == "x y"
    # vqaEval.py's contraction table whole: "whatll" and "what'll" are one answer there (each scored 0 against the
    # other before), and its quirks kept ("she's" left as written, "somebody'd" made "somebodyd")
    assert normalise_answer("Whatll") == normalise_answer("what'll") == "what'll"
    assert normalise_answer("somebodyll") == "somebody'll" and normalise_answer("youd've") == "you'd've"
    assert normalise_answer("somebody'd") == "somebodyd" and normalise_answer("shes") == "shes"
    assert vqa_accuracy("someonell", ["someone'll", "someone will", "someone"]) > 0
    # answer keys from other scripts and the web: each was scored wrong against the model's same answer
    assert normalise_answer("The diamond is on the bottom.\u200b") == normalise_answer("\u200fThe diamond is on the bottom.")
    assert exact_match(["एक सफ़ेद वृत्त।", "دائرة؟", "«cercle»", "It doesn’t"], ["एक सफ़ेद वृत्त", "دائرة", "cercle", "it doesnt"]) == 1.0
    # ... but VQA's accuracy and its server's answers stay the official evaluation's, which keeps quotes and invisible
    # characters as written and decides on the human answers as written whether they disagree (values of vqaEval.py)
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 9 + ["t-shirt\u200b"]) == 1.0
    assert vqa_accuracy("kid's t-shirt", ["kid's t-shirt"] * 9 + ["kid’s t-shirt"]) == 1.0
    assert vqa_accuracy("dont know", ["don’t know"] * 4 + ["dont know"] * 6) == 0.0
    assert normalise_answer("McDonald’s", official=True) == "mcdonald’s"
    # a letter in curly quotes is read (it was, before they were made ASCII's)
    assert [parse_choice(text) for text in ("I pick ‘B’.", "The correct option is ‘C’", "‘A’", "B’s shape")] == ["B", "C", "A", None]
    assert exact_match(["A circle", "three", "blue"], ["circle", "3", "red"]) == pytest.approx(2 / 3)


def test_vqa_accuracy_on_hand_made_human_answers():
    from mmcaption.evaluation.answers import vqa_accuracy

    ten = ["2"] * 3 + ["3"] * 7
    # left out: one of the three "2"s -> 2 of the other 9 agree (2/3); one of the "3"s -> 3 agree (1)
    assert vqa_accuracy("two", ten) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 0.9
    assert vqa_accuracy("3.", ten) == 1.0
    assert vqa_accuracy("4", ten) == 0.0
    # one human of ten: 1/3 on the nine subsets that keep them, 0 on the one that leaves them out
    assert vqa_accuracy("Yes", ["yes"] + ["no"] * 9) == pytest.approx(0.3)
    # leaving out either "dog" leaves one match (1/3), leaving out "puppy" two (2/3)
    assert vqa_accuracy("A dog", ["dog", "dog", "puppy"]) == pytest.approx((1 / 3 + 1 / 3 + 2 / 3) / 3)
    with pytest.raises(ValueError):
        vqa_accuracy("dog", [])


def test_textvqa_and_aokvqa_answers_are_scored_as_their_own_evaluations_score_them():
    from mmcaption.evaluation.answers import vqa_accuracy

    # TextVQA's evaluator (m4c) normalises each human answer as it does the prediction, then leaves one out as VQAv2's
    assert vqa_accuracy("two", ["two"] * 10) == 0.0 and vqa_accuracy("two", ["two"] * 10, "textvqa") == 1.0
    assert vqa_accuracy("Nikon", ["Nikon"] * 10, "textvqa") == 1.0
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7, "textvqa") == pytest.approx(0.9)
    # ... after its own tokenising of every answer: commas and question marks gone, 's split off (each scored 0)
    assert vqa_accuracy("mcdonald's", ["mcdonald 's"] * 10, "textvqa") == 1.0
    assert vqa_accuracy("redwhite", ["red,white"] * 10, "textvqa") == 1.0
    assert vqa_accuracy("red,white", ["red white"] * 10, "textvqa") == 0.0
    # A-OKVQA's eval_predictions.py: min(#humans who gave it / 3, 1), no one left out
    assert vqa_accuracy("square", ["square"] * 3 + ["box"] * 7, "aokvqa") == 1.0
    assert vqa_accuracy("Square.", ["square"] + ["box"] * 9, "aokvqa") == pytest.approx(1 / 3)
    assert vqa_accuracy("circle", ["square"] * 10, "aokvqa") == 0.0
    # the humans' answers as written equal a prediction written as they are (the prediction alone was normalised: 0)
    assert vqa_accuracy("a taxi", ["a taxi"] * 4 + ["cab"] * 6, "aokvqa") == 1.0
    assert vqa_accuracy("two", ["two"] * 4 + ["cab"] * 6, "aokvqa") == 1.0


def test_vqa_accuracy_normalises_human_answers_only_when_they_disagree_as_the_official_evaluation():
    from mmcaption.evaluation.answers import vqa_accuracy

    # vqaEval.py leaves ten identical human answers as written; the prediction is normalised as LLaVA's
    # submission script and lmms-eval do before scoring
    assert vqa_accuracy("t shirt", ["t-shirt"] * 10) == 0.0
    assert vqa_accuracy("T-Shirt", ["t shirt"] * 10) == 1.0
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    # one human who wrote it otherwise: all ten lose their punctuation, and "t-shirt" is "t shirt"
    assert vqa_accuracy("t shirt", ["t-shirt"] * 9 + ["t shirt"]) == 1.0
    # ... their punctuation only: articles, number words and capitals stay as the humans wrote them (both
    # scored 1.0 when the human answers were normalised as the prediction is, as lmms-eval does)
    assert vqa_accuracy("white", ["the white"] * 5 + ["gray"] * 5) == 0.0
    assert vqa_accuracy("three", ["three"] * 4 + ["4"] * 6) == 0.0  # the prediction is "3"
    assert vqa_accuracy("White", ["White"] * 5 + ["gray"] * 5) == 0.0  # the prediction is "white"
    assert vqa_accuracy("The white.", ["white"] * 5 + ["gray"] * 5) == 1.0
    # a single reference answer (a user's own file, not VQAv2's ten) is compared as exact match is
    assert vqa_accuracy("The T-shirt", ["t-shirt"]) == 1.0


@pytest.mark.parametrize("generated, letter", [
    ("答案是B", "B"), ("答案是B。", "B"), ("选B", "B"), ("选项C", "C"), ("Ｂ", "B"), ("答案：Ｄ", "D"),  # were all unread
    ("正确答案是 B", "B"), ("BとCの間", None),  # two letters: none
])
def test_letters_written_against_chinese_or_japanese_or_typed_full_width_are_read(generated, letter):
    assert parse_choice(generated) == letter


def test_answers_in_chinese_and_other_keyboards_compare_as_they_read():
    from mmcaption.evaluation.answers import vqa_accuracy

    options = ["红色", "绿色", "蓝色", "黄色"]
    assert parse_choice("是绿色的", options) == "B"  # the option's text inside Chinese text: was None
    assert parse_choice("a greenish one", ["green", "red"]) is None  # a Latin option still needs word boundaries
    assert exact_match(["红色。", "是的，蓝色！", "Cafe\u0301"], ["红色", "是的 蓝色", "café"]) == 1.0  # were 0 each
    assert vqa_accuracy("蓝色。", ["蓝色"] * 10) == 1.0
    assert normalise_answer("ＲＥＤ？") == "red"


def test_pope_reads_answers_as_its_evaluation_and_reports_precision_recall_f1_and_yes_ratio():
    from mmcaption.evaluation.answers import YesNoTally, pope_answer

    # LLaVA's eval_pope.py: the first sentence, commas dropped; the words "no", "No" or "not" make it no
    assert [pope_answer(t) for t in ("Yes, there is a dog.", "No. There is a cat.", "There is a cat in the image.",
                                     "no", "There is not a dog.", "Yes")] == ["yes", "no", "yes", "no", "no", "yes"]
    assert pope_answer("Yes. There is no cat.") == "yes"  # only the first sentence counts
    tally = YesNoTally()
    for prediction, label in [("Yes, there is a dog.", "yes"), ("No. There is a cat.", "yes"), ("There is a cat.", "yes"),
                              ("no", "no"), ("There is not a dog.", "no"), ("Yes", "no")]:
        tally.add(prediction, label)
    # true positives 2, false negatives 1, true negatives 2, false positives 1
    assert tally.metrics() == {"accuracy": pytest.approx(4 / 6), "precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                               "f1": pytest.approx(2 / 3), "yes_ratio": pytest.approx(0.5), "questions": 6}


def test_mme_questions_get_mmes_own_score_of_accuracy_plus_both_questions_about_an_image_right():
    # lmms-lab's MME (category, question_id naming the image, Yes/No answers) was scored by exact match alone: the
    # figure papers compare (perception out of 2,000, cognition out of 800) was not there
    from mmcaption.evaluation.yes_no import YesNoScores, mme_answer, mme_said

    # MME's evaluation reads yes or no from the first four characters, after "y" or "n" alone
    assert [mme_answer(t) for t in ("Yes.", "No", "y", "N", "Yes, there is a dog", "none", "not sure", "The answer is yes",
                                    "", "maybe")] == ["yes", "no", "yes", "no", "yes", "no", "no", "other", "other", "other"]
    scores = YesNoScores()
    for category, image, answer, prediction in [
            ("existence", "existence/a.jpg", "Yes", "Yes"), ("existence", "existence/a.jpg", "No", "No, there is not."),
            ("existence", "existence/b.jpg", "Yes", "no"), ("existence", "existence/b.jpg", "No", "No"),
            ("code_reasoning", "code_reasoning/c.png", "Yes", "The answer is yes"),  # "other": wrong (POPE reads yes)
            ("code_reasoning", "code_reasoning/c.png", "No", "n"),
            ("OCR", "OCR/d.jpg", "Yes", None), ("OCR", "OCR/d.jpg", "No", "No")]:  # an image that could not be read
        scores.add({"question_id": image, "category": category, "answer": answer, "prediction": prediction})
    assert scores.summary(answered=9) == {}  # a row whose answer is not yes or no: neither POPE nor MME
    mme = scores.summary(answered=8)["mme"]
    # existence: 3 of 4 right + 1 of 2 images both right = 75 + 50; code reasoning 50 + 0; OCR 50 + 0
    assert {name: s["score"] for name, s in mme["per_category"].items()} == {"existence": pytest.approx(125.0), "OCR": pytest.approx(50.0),
                                                                            "code_reasoning": pytest.approx(50.0)}
    assert list(mme["per_category"]) == ["existence", "OCR", "code_reasoning"]  # MME's order: perception, then cognition
    assert (mme["perception"]["score"], mme["perception"]["out_of"], mme["perception"]["categories"]) == (pytest.approx(175.0), 2000, 2)
    assert (mme["cognition"]["score"], mme["cognition"]["out_of"], len(mme["cognition"]["missing"])) == (pytest.approx(50.0), 800, 3)
    assert "pope" not in scores.summary(answered=8)
    said = mme_said(mme)
    assert "perception 175.0 of 2000 (8 of its categories not asked), cognition 50.0 of 800" in said
    assert "existence 125.0 (acc 0.750, acc+ 0.500)" in said and "left out" not in said
    # an image asked one question (a run stopped between its two) is left out of the score, as lmms-eval leaves it, and
    # counted: it was scored as "both right" with its one answer
    scores.add({"question_id": "OCR/e.jpg", "category": "OCR", "answer": "yes", "prediction": "yes"})
    mme = scores.summary(answered=9)["mme"]
    assert (mme["per_category"]["OCR"]["score"], mme["per_category"]["OCR"]["images"], mme["images_left_out"]) == (50.0, 1, 1)
    assert "1 images not asked both their questions (a run stopped between them) are left out of it" in mme_said(mme)
    # questions with an id each (none pairs two about one image): not MME's score, which needs the pairs; POPE's numbers
    single = YesNoScores()
    for n, (answer, prediction) in enumerate([("Yes", "Yes"), ("No", "Yes")]):
        single.add({"question_id": f"q{n}", "category": "color", "answer": answer, "prediction": prediction})
    assert list(single.summary(answered=2)) == ["pope"]

    # a yes/no set with other categories (POPE's adversarial, popular, random) keeps POPE's numbers
    pope = YesNoScores()
    for category in ("popular", "existence"):
        pope.add({"question_id": "1", "category": category, "answer": "yes", "prediction": "Yes"})
    assert list(pope.summary(answered=2)) == ["pope"]


def test_human_answers_in_another_unicode_form_score_as_the_prediction_in_its_own():
    # the prediction was NFKC-normalised and the human answers not: NFD "màu đỏ" (macOS) scored 0 against itself
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "màu đỏ")
    assert vqa_accuracy(decomposed, [decomposed] * 10) == 1.0
    assert vqa_accuracy("màu đỏ", [decomposed] * 10) == 1.0
    assert vqa_accuracy("２", ["２"] * 10) == 1.0  # full-width
    assert vqa_accuracy("红色", ["红色。"] * 5 + ["红"] * 5) == 1.0  # the ideographic full stop, as "." is
