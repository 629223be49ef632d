"""TextVQA, GQA and A-OKVQA files, read as they are downloaded, by `mmcaption predict` of open questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from PIL import Image

from mmcaption.data import DataError, QuestionsPredictDataModule
from mmcaption.evaluation.answers import normalise_answer, vqa_accuracy
from mmcaption.module import MultimodalCaptioner


def predict(backbones, checkpoint: Path, questions: Path, output: Path, **settings) -> tuple[list[dict], dict]:
    """The rows and the summary of a predict run on ``questions``."""
    module = MultimodalCaptioner.load_from_checkpoint(checkpoint)
    module.generation.update(min_new_tokens=2, max_new_tokens=4)
    data = QuestionsPredictDataModule(questions_file=str(questions), output=str(output), tokenizer=str(backbones[0]),
                                      image_processor=str(backbones[1]), batch_size=2, num_workers=0, **settings)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=output.parent).predict(module, datamodule=data)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    return rows, json.loads(Path(f"{output}.summary.json").read_text())


def photos(image_folder: Path, folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.open(image_folder / f"img{index % 3}.png").convert("RGB").save(folder / name)


def test_textvqa_as_downloaded_is_answered_and_scored_by_vqa_accuracy(backbones, trained_checkpoint, image_folder, tmp_path):
    # TextVQA's val file beside train_images/ (as train_val_images.zip unpacks): it was refused as "not VQAv2's
    # official questions file", and its questions could not be asked at all
    photos(image_folder, tmp_path / "train_images", ["0054c91397f2fe05.jpg", "00685bc495504d61.jpg"])
    entries = [("0054c91397f2fe05", 34602, "what is the brand of this camera?"),
               ("00685bc495504d61", 34603, "what does the sign say?")]

    def write(answers: list[list[str]]) -> Path:
        path = tmp_path / "TextVQA_0.5.1_val.json"
        path.write_text(json.dumps({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
            {"question": q, "image_id": i, "image_classes": ["Camera"], "flickr_original_url": "https://example.org/x.jpg",
             "image_width": 1024, "image_height": 768, "answers": said, "question_tokens": q.split(), "question_id": qid,
             "set_name": "val"} for (i, qid, q), said in zip(entries, answers)]}))
        return path

    rows, _ = predict(backbones, trained_checkpoint, write([["nikon"] * 10, ["stop"] * 10]), tmp_path / "first.jsonl")
    assert [(r["question_id"], r["image"], r["error"]) for r in rows] == [
        (34602, "0054c91397f2fe05.jpg", None), (34603, "00685bc495504d61.jpg", None)]
    said = [r["prediction"] for r in rows]
    # ten human answers each, scored as TextVQA's evaluation scores them: min(#humans who gave it / 3, 1)
    answers = [[said[0]] * 10, [said[1]] * 2 + ["exit"] * 8]
    rows, summary = predict(backbones, trained_checkpoint, write(answers), tmp_path / "scored.jsonl")
    assert [r["prediction"] for r in rows] == said
    two_of_ten = (8 * 2 / 3 + 2 * 1 / 3) / 10
    assert [r["vqa_accuracy"] for r in rows] == pytest.approx([1.0, two_of_ten])
    assert [r["vqa_accuracy"] for r in rows] == pytest.approx([vqa_accuracy(p, a) for p, a in zip(said, answers)])
    assert summary["vqa_accuracy"] == pytest.approx((1.0 + two_of_ten) / 2)
    # TextVQA's evaluator normalises the human answers as it does the prediction (VQAv2's keeps them as written): ten
    # humans who wrote the answer in capitals score it 1, where VQAv2's rule scores 0
    upper = [[said[0].upper() + "."] * 10, [said[1]] * 10]
    rows, _ = predict(backbones, trained_checkpoint, write(upper), tmp_path / "upper.jsonl")
    assert [r["vqa_accuracy"] for r in rows] == [1.0, 1.0] and [r["vqa_scoring"] for r in rows] == ["textvqa"] * 2
    assert vqa_accuracy(said[0], upper[0]) == 0.0 != vqa_accuracy(said[0], upper[0], "textvqa")

    # its images elsewhere: refused naming the benchmark and where they were looked for
    with pytest.raises(DataError, match=r"none of the first 2 images of .*TextVQA_0.5.1_val.json \(0054c91397f2fe05.jpg, \.\.\.\), "
                                        r"TextVQA's questions, is in .*train_images.*: give the folder that holds TextVQA's images"):
        predict(backbones, trained_checkpoint, write(answers), tmp_path / "never.jsonl", image_root=str(tmp_path / "nowhere"))


def test_gqa_is_scored_by_exact_match_per_structural_type(backbones, trained_checkpoint, image_folder, tmp_path):
    # GQA's testdev_balanced_questions.json: an object keyed by question id, images in images/<imageId>.jpg
    photos(image_folder, tmp_path / "images", ["n288870.jpg", "n161313.jpg"])
    asked = {"201307251": ("n288870", "Is it overcast?", "no", "verify"),
             "201640614": ("n161313", "Who is wearing the shirt?", "girl", "query"),
             "202225914": ("n161313", "Is the shirt red or white?", "white", "choose")}
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps({qid: {"semantic": [], "entailed": [], "equivalent": [qid], "question": q, "imageId": image,
                                      "isBalanced": True, "groups": {"global": None, "local": "10c-weather"}, "answer": a,
                                      "semanticStr": "", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                                      "types": {"detailed": "weatherVerify", "semantic": "global", "structural": kind},
                                      "fullAnswer": f"The answer is {a}."} for qid, (image, q, a, kind) in asked.items()}))
    rows, summary = predict(backbones, trained_checkpoint, path, tmp_path / "gqa.jsonl", image_root=str(tmp_path))
    assert [(r["question_id"], r["image"], r["answer"], r["category"], r["error"]) for r in rows] == [
        (qid, f"{image}.jpg", a, kind, None) for qid, (image, _, a, kind) in asked.items()]
    assert [r["fullAnswer"] for r in rows] == [f"The answer is {a}." for _, _, a, _ in asked.values()]  # as GQA names it
    assert [r["correct"] for r in rows] == [normalise_answer(r["prediction"]) == normalise_answer(r["answer"]) for r in rows]
    assert set(summary["per_category"]) == {"verify", "query", "choose"}
    assert all(value["answered"] == 1 for value in summary["per_category"].values())


def test_aokvqa_direct_answers_on_coco_2017_images(backbones, trained_checkpoint, image_folder, tmp_path):
    # A-OKVQA's val file: COCO 2017 image ids, its direct-answer task scored by VQA accuracy; the choices are kept
    photos(image_folder, tmp_path / "coco" / "val2017", ["000000461751.jpg", "000000000724.jpg"])
    path = tmp_path / "aokvqa_v1p0_val.json"
    path.write_text(json.dumps([
        {"split": "val", "image_id": 461751, "question_id": "22MexNkBPpdZGX6sxbxVBH", "question": "What is the man awaiting?",
         "choices": ["skateboarder", "train", "delivery", "cab"], "correct_choice_idx": 3,
         "direct_answers": ["ride", "ride", "bus", "taxi", "travelling", "traffic", "taxi", "cab", "cab", "his ride"],
         "difficult_direct_answer": False, "rationales": ["A train would not be on the street."]},
        {"split": "val", "image_id": 724, "question_id": "2Fd9rbjHHzuTCC4PTiMgBr", "question": "What is the sign for?",
         "choices": ["parking", "stopping", "turning", "yielding"], "correct_choice_idx": 1,
         "direct_answers": ["stop"] * 10, "difficult_direct_answer": False, "rationales": []}]))
    rows, summary = predict(backbones, trained_checkpoint, path, tmp_path / "aokvqa.jsonl", image_root=str(tmp_path / "coco"))
    assert [(r["question_id"], r["image"], r["error"], r["choices"][3]) for r in rows] == [
        ("22MexNkBPpdZGX6sxbxVBH", "000000461751.jpg", None, "cab"), ("2Fd9rbjHHzuTCC4PTiMgBr", "000000000724.jpg", None, "yielding")]
    assert rows[1]["answers"] == ["stop"] * 10 and "vqa_accuracy" in summary
    # scored as A-OKVQA's eval_predictions.py: min(#matches / 3, 1), no human left out (3 of 10 score 1, VQAv2's rule 0.9);
    # a question marked difficult_direct_answer is left out of its direct-answer score: answered, not scored
    said = [r["prediction"] for r in rows]
    content = json.loads(path.read_text())
    content[0]["direct_answers"] = [said[0]] * 3 + ["taxi"] * 7
    content[1]["difficult_direct_answer"] = True
    path.write_text(json.dumps(content))
    rows, summary = predict(backbones, trained_checkpoint, path, tmp_path / "scored.jsonl", image_root=str(tmp_path / "coco"))
    assert rows[0]["vqa_accuracy"] == 1.0 and vqa_accuracy(said[0], content[0]["direct_answers"]) == pytest.approx(0.9)
    assert "vqa_accuracy" not in rows[1] and rows[1]["prediction"] == said[1] and rows[1]["difficult_direct_answer"] is True
    assert (summary["vqa_accuracy"], summary["vqa_scored"]) == (1.0, 1)


def aokvqa(path: Path, questions: list[tuple[int, str, list[str], int | None]], split: str = "val") -> Path:
    path.write_text(json.dumps([
        {"split": split, "image_id": image_id, "question_id": f"q{n}", "question": question, "choices": choices,
         **({"correct_choice_idx": right, "direct_answers": [choices[right % len(choices)]] * 10} if right is not None else {}),
         "difficult_direct_answer": False, "rationales": []} for n, (image_id, question, choices, right) in enumerate(questions)]))
    return path


def test_aokvqa_multiple_choice_with_a_model_that_always_picks_blue(backbones, trained_checkpoint, image_folder, tmp_path):
    from tests.test_benchmark_formats import choice_data, predictor, read_output, rigged

    photos(image_folder, tmp_path / "coco" / "val2017", ["000000461751.jpg", "000000000724.jpg"])
    path = aokvqa(tmp_path / "aokvqa_v1p0_val.json", [(461751, "What colour is the bus?", ["red", "green", "blue", "white"], 2),
                                                      (724, "What colour is the sign?", ["blue", "red", "green", "yellow"], 1)])
    module = rigged(trained_checkpoint, " blue")  # likelihood scoring: the option "blue", wherever it is
    output = tmp_path / "aokvqa.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, path, output, format="aokvqa",
                                                               image_root=str(tmp_path / "coco")))
    rows, summary = read_output(output)
    assert [(r["question_id"], r["image"], r["A"], r["answer"], r["prediction"], r["correct"], r["error"]) for r in rows] == [
        ("q0", "000000461751.jpg", "red", "C", "C", "True", ""), ("q1", "000000000724.jpg", "blue", "B", "A", "False", "")]
    assert (summary["correct"], summary["answered"], summary["accuracy"]) == (1, 2, 0.5)
    # CircularEval: the first right under every rotation of its options, the second under none
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, path, tmp_path / "circular.csv", format="aokvqa",
                                                               image_root=str(tmp_path / "coco" / "val2017"), circular=True))
    _, summary = read_output(tmp_path / "circular.csv")
    assert (summary["circular_correct"], summary["circular_questions"]) == (1, 2)

    # the test split has no correct_choice_idx: answered, not scored; its images in test2017/
    photos(image_folder, tmp_path / "coco" / "test2017", ["000000000001.jpg"])
    test = aokvqa(tmp_path / "aokvqa_v1p0_test.json", [(1, "What colour is it?", ["blue", "red", "green", "white"], None)], "test")
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, test, tmp_path / "test.csv", format="aokvqa",
                                                               image_root=str(tmp_path / "coco")))
    rows, summary = read_output(tmp_path / "test.csv")
    assert [(r["prediction"], r["answer"]) for r in rows] == [("A", "")] and summary.get("accuracy") is None

    broken = aokvqa(tmp_path / "broken.json", [(724, "Which?", ["blue", "red"], 2)])
    with pytest.raises(DataError, match=r"broken.json, question q0: correct_choice_idx 2 is not the index of one of its 2 choices"):
        choice_data(backbones, broken, tmp_path / "b.csv", format="aokvqa").read_rows()
    # given as the original scripts' CSV (the default format): it was "free-form questions"; the format is named
    from mmcaption.errors import ConfigError

    with pytest.raises(ConfigError, match=r"holds A-OKVQA's questions .*configs/predict/aokvqa\.yaml \(or --data.format aokvqa\)"):
        choice_data(backbones, path, tmp_path / "c.csv").read_rows()


def test_a_public_benchmarks_file_without_questions_or_with_a_broken_one_is_refused_by_name(tmp_path):
    from mmcaption.data.questions import read_questions

    empty = tmp_path / "TextVQA_0.5.1_test.json"
    empty.write_text(json.dumps({"dataset_type": "test", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": []}))
    with pytest.raises(DataError, match=r"TextVQA_0.5.1_test.json has no questions \(a TextVQA file\)"):
        read_questions(empty)
    broken = tmp_path / "testdev_balanced_questions.json"
    broken.write_text(json.dumps({"1": {"imageId": "n1", "question": "Is it?", "answer": "no"},
                                  "2": {"imageId": "n2", "question": " ", "answer": "yes"}}))
    with pytest.raises(DataError, match=r"testdev_balanced_questions.json, question 2 \('2'\): needs its question id, image id and "
                                        r"question text"):
        read_questions(broken)


def test_a_record_without_its_question_is_named_whichever_it_is(tmp_path):
    # the formats were recognised by their first records' keys, a question among them: one without it made a GQA file
    # "not VQAv2's official questions file", and an A-OKVQA file's record 2 "record 1: no image"
    from mmcaption.data.questions import read_questions

    gqa = tmp_path / "testdev_balanced_questions.json"
    gqa.write_text(json.dumps({"1": {"imageId": "n1", "question": "Is it?", "answer": "no"}, "2": {"imageId": "n2", "answer": "yes"}}))
    with pytest.raises(DataError, match=r"testdev_balanced_questions.json, question 2 \('2'\): needs its question id, image id"):
        read_questions(gqa)
    aok = tmp_path / "aokvqa_v1p0_val.json"
    aok.write_text(json.dumps([{"split": "val", "image_id": 1, "question_id": "a", "question": "Why?", "choices": ["x", "y"],
                                "correct_choice_idx": 0, "direct_answers": ["x"] * 10},
                               {"split": "val", "image_id": 2, "question_id": "b", "choices": ["x", "y"],
                                "correct_choice_idx": 1, "direct_answers": ["y"] * 10}]))
    with pytest.raises(DataError, match=r"aokvqa_v1p0_val.json, question 2 \('b'\): needs its question id, image id"):
        read_questions(aok)
    # VQAv2's annotations given with it: it holds its own answers (it was "a .json questions file is VQAv2's ...")
    gqa.write_text(json.dumps({"1": {"imageId": "n1", "question": "Is it?", "answer": "no"}}))
    with pytest.raises(DataError, match=r"annotations_file .*notes.json goes with VQAv2's questions file: .*"
                                        r"testdev_balanced_questions.json, a GQA file, holds its own answers"):
        read_questions(gqa, tmp_path / "notes.json")


def test_seed_bench_image_questions_are_answered_with_accuracy_per_question_type(backbones, trained_checkpoint, image_folder,
                                                                                tmp_path, monkeypatch):
    # SEED-Bench.json as released, its images unpacked beside it in SEED-Bench-image/: it was taken for ScienceQA's
    # problems.json ("use configs/predict/scienceqa.yaml"), whose reader then refused it for not mapping ids to problems
    from mmcaption.errors import ConfigError
    from tests.test_benchmark_formats import choice_data, predictor, read_output, rigged

    photos(image_folder, tmp_path / "SEED-Bench-image", ["1454426_2591111986.jpg", "1002_3711291.jpg"])
    question = {"data_type": "image", "question_type_id": 3}
    path = tmp_path / "SEED-Bench.json"
    path.write_text(json.dumps({"question_type": {"Scene Understanding": 1, "Instance Attributes": 3, "Action Recognition": 10},
                                "questions": [
        {**question, "question_id": "101669", "data_id": "1454426_2591111986.jpg", "question": "What colour is the towel?",
         "choice_a": "red", "choice_b": "green", "choice_c": "blue", "choice_d": "white", "answer": "C"},
        {**question, "question_id": "101670", "data_id": "1002_3711291.jpg", "question": "What colour is the car?",
         "choice_a": "blue", "choice_b": "red", "choice_c": "green", "choice_d": "yellow", "answer": "B"},
        {"question_id": "v1", "data_type": "video", "question_type_id": 10, "data_id": "v/1.mp4", "segment": [0, 5],
         "question": "What happens?", "choice_a": "a", "choice_b": "b", "choice_c": "c", "choice_d": "d", "answer": "A"},
        {"question_id": "101671", "data_type": "image", "question_type_id": 1, "data_id": "1002_3711291.jpg",
         "question": "Where is it?", "choice_a": "blue", "choice_b": "a kitchen", "choice_c": "a road", "choice_d": "a beach",
         "answer": "A"}]}, indent=2))
    said = []  # what it tells the user, caught where it is said: Lightning's logger may not propagate to pytest's
    monkeypatch.setattr("mmcaption.data.vqa_formats.rank_zero_info", said.append)
    module = rigged(trained_checkpoint, " blue")  # likelihood scoring: the option "blue", wherever it is
    output = tmp_path / "seedbench.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, path, output, format="seedbench"))
    rows, summary = read_output(output)
    assert [(r["question_id"], r["image"], r["category"], r["answer"], r["prediction"], r["correct"]) for r in rows] == [
        ("101669", "1454426_2591111986.jpg", "Instance Attributes", "C", "C", "True"),
        ("101670", "1002_3711291.jpg", "Instance Attributes", "B", "A", "False"),
        ("101671", "1002_3711291.jpg", "Scene Understanding", "A", "A", "True")]
    assert (summary["correct"], summary["answered"]) == (2, 3)
    assert summary["per_category"]["Instance Attributes"]["accuracy"] == 0.5
    assert summary["per_category"]["Scene Understanding"]["accuracy"] == 1.0
    assert any("3 of its 4 questions are about one image; the others are left out (data_type 'video' x 1)" in n for n in said)

    # given as the original scripts' CSV or as free-form questions, the file is named for what it is
    with pytest.raises(ConfigError, match=r"holds SEED-Bench's questions .*configs/predict/seedbench\.yaml \(or --data.format seedbench\)"):
        choice_data(backbones, path, tmp_path / "c.csv").read_rows()
    with pytest.raises(ConfigError, match=r"SEED-Bench file .*configs/predict/seedbench\.yaml"):
        QuestionsPredictDataModule(questions_file=str(path), output=str(tmp_path / "q.jsonl"), tokenizer=str(backbones[0]),
                                   image_processor=str(backbones[1])).check_inputs()
    # the Hugging Face copy (lmms-lab/SEED-Bench): the same columns in parquet, each question's image inside (a list of one)
    import datasets

    entries = json.loads(path.read_text())["questions"]
    for entry in entries:
        entry.pop("segment", None)
        picture = Image.open(tmp_path / "SEED-Bench-image" / entry["data_id"]) if entry["data_type"] == "image" else None
        entry["image"] = [picture] if picture else [Image.new("RGB", (8, 8))] * 2  # a video's frames
    features = datasets.Features({**{key: datasets.Value("string") for key in entries[0] if key != "question_type_id"},
                                  "question_type_id": datasets.Value("int64"), "image": datasets.Sequence(datasets.Image())})
    parquet = tmp_path / "hub" / "test-00000-of-00001.parquet"
    datasets.Dataset.from_list(entries, features=features).to_parquet(str(parquet))
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, parquet, tmp_path / "hub.csv", format="seedbench"))
    rows, summary = read_output(tmp_path / "hub.csv")
    assert [(r["question_id"], r["image"], r["category"], r["prediction"], r["error"]) for r in rows] == [
        ("101669", "1454426_2591111986.jpg", "Instance Attributes", "C", ""),
        ("101670", "1002_3711291.jpg", "Instance Attributes", "A", ""),
        ("101671", "1002_3711291.jpg", "Scene Understanding", "A", "")]
    assert (summary["correct"], summary["answered"]) == (2, 3)
    with pytest.raises(ConfigError, match=r"is a parquet file with SEED-Bench's columns .*configs/predict/seedbench\.yaml"):
        choice_data(backbones, parquet, tmp_path / "c.csv", format="scienceqa").read_rows()
    videos = tmp_path / "hub" / "test-00003-of-00004.parquet"  # a shard of video questions alone: said, not a traceback
    datasets.Dataset.from_list([entry for entry in entries if entry["data_type"] == "video"], features=features).to_parquet(str(videos))
    with pytest.raises(DataError, match=r"has no question about one image .*: its questions' data_type is 'video' x 1$"):
        choice_data(backbones, videos, tmp_path / "v.csv", format="seedbench").read_rows()

    # SEED-Bench-2: its questions about one image ('Single Image') read, the others counted by kind, its 27 types
    # numbered (it was "no image question ... video questions are not read"); a first release's file without its
    # question_type map is named by SEED-Bench's own 12 (it was '3')
    v2 = tmp_path / "SEED-Bench_v2_level1_2_3.json"
    part = {"level": "L1", "subpart": "Single-Image & Text Comprehension", "version": "v2"}
    v2.write_text(json.dumps({"questions": [
        {**part, "question_id": "1", "data_type": "Single Image", "data_id": "1002_3711291.jpg", "question": "How many?",
         "choice_a": 3, "choice_b": 4, "answer": "B", "question_type_id": 5},
        {**part, "question_id": "2", "data_type": "Multiple Images", "data_id": ["a.jpg", "b.jpg"], "question": "Which?",
         "choice_a": "a", "choice_b": "b", "answer": "A", "question_type_id": 23}]}))
    questions = choice_data(backbones, v2, tmp_path / "v2.csv", format="seedbench").read_rows()
    assert [(q.record["category"], q.options, q.answer, q.image) for q in questions] == [("5", ["3", "4"], "B", "1002_3711291.jpg")]
    assert any("1 of its 2 questions are about one image; the others are left out (data_type 'Multiple Images' x 1)" in n
               for n in said)
    unnamed = tmp_path / "unnamed.json"
    unnamed.write_text(json.dumps({"questions": json.loads(path.read_text())["questions"][:1]}))
    assert choice_data(backbones, unnamed, tmp_path / "u.csv", format="seedbench").read_rows()[0].record["category"] == (
        "Instance Attributes")

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"questions": [{"question_id": "7", "data_type": "image", "data_id": "x.jpg", "question": "Which?",
                                                 "choice_a": "blue", "choice_b": "red", "answer": "D"}]}))
    with pytest.raises(DataError, match=r"broken.json, question 7: answer 'D' is not the letter of one of its 2 choices"):
        choice_data(backbones, broken, tmp_path / "b.csv", format="seedbench").read_rows()


def test_a_benchmarks_hugging_face_parquet_of_open_questions_is_answered_from_the_images_inside(backbones, trained_checkpoint,
                                                                                               image_folder, tmp_path):
    # lmms-lab's copies of POPE, VQAv2, MME ...: a parquet file, each question's image inside it. It was "questions are
    # read from .jsonl, .csv, .tsv or .json files", and the multiple-choice module sent it to ScienceQA's config
    import datetime

    import datasets

    from mmcaption.errors import ConfigError
    from tests.test_benchmark_formats import choice_data

    features = datasets.Features({"question_id": datasets.Value("string"), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "category": datasets.Value("string"),
                                  "image": datasets.Image(), "added": datasets.Value("timestamp[s]"),
                                  "hints": datasets.Sequence(datasets.Image())})  # columns JSON has no type for

    def write(answers: list[str]) -> Path:
        path = tmp_path / "pope" / "test-00000-of-00001.parquet"
        datasets.Dataset.from_list([
            {"question_id": str(n), "question": f"Is there a shape in the image? ({n})", "answer": answer, "category": "popular",
             "image": Image.open(image_folder / f"img{n}.png").convert("RGB"), "added": datetime.datetime(2024, 1, n + 1),
             "hints": [Image.new("RGB", (4, 4))]} for n, answer in enumerate(answers)], features=features,
        ).to_parquet(str(path))
        return path

    rows, _ = predict(backbones, trained_checkpoint, write(["yes", "no"]), tmp_path / "first.jsonl")
    assert [(r["question_id"], r["image"], r["added"], r["error"]) for r in rows] == [
        ("0", f"{tmp_path / 'pope' / 'test-00000-of-00001.parquet'}, row 1", "2024-01-01 00:00:00", None),
        ("1", f"{tmp_path / 'pope' / 'test-00000-of-00001.parquet'}, row 2", "2024-01-02 00:00:00", None)]
    assert "hints" not in rows[0]  # images beside the question's: not written into the output
    said = [r["prediction"] for r in rows]
    rows, summary = predict(backbones, trained_checkpoint, write([said[0], said[1] + " indeed"]), tmp_path / "scored.jsonl")
    assert [r["prediction"] for r in rows] == said  # the same images read again: the same answers
    assert [r["correct"] for r in rows] == [True, False]
    assert (summary["correct"], summary["answered"]) == (1, 2)

    # lmms-lab's TextVQA is scored as TextVQA's evaluator scores it, as its JSON is (VQAv2's rule gave "Nikon" 0 against
    # ten humans' "Nikon")
    from mmcaption.data.questions import read_questions

    textvqa = tmp_path / "textvqa.parquet"
    datasets.Dataset.from_list([{"question_id": 34602, "question": "what brand?", "answers": ["Nikon"] * 10, "set_name": "val",
                                 "ocr_tokens": ["NIKON"], "image": Image.new("RGB", (4, 4))}]).to_parquet(str(textvqa))
    assert read_questions(textvqa)[0].record["vqa_scoring"] == "textvqa"
    # a parquet of questions with their options (AI2D's layout) given as free-form questions is named, not scored at 0%
    options = tmp_path / "ai2d.parquet"
    datasets.Dataset.from_list([{"question": "Which?", "options": ["a", "b"], "answer": "1",
                                 "image": Image.new("RGB", (4, 4))}]).to_parquet(str(options))
    with pytest.raises(ConfigError, match=r"ai2d\.parquet is a parquet file with options \(choices\): it holds multiple-choice"):
        QuestionsPredictDataModule(questions_file=str(options), output=str(tmp_path / "q.jsonl"), tokenizer=str(backbones[0]),
                                   image_processor=str(backbones[1])).check_inputs()
    # given to the multiple-choice module, it is named as free-form questions
    with pytest.raises(ConfigError, match=r"is a parquet file of questions without options: free-form questions, answered "
                                          r"with --config configs/predict/questions\.yaml"):
        choice_data(backbones, tmp_path / "pope" / "test-00000-of-00001.parquet", tmp_path / "c.csv").read_rows()


def test_mmes_release_folder_is_answered_and_reported_with_mmes_own_score(backbones, trained_checkpoint, image_folder,
                                                                         tmp_path, monkeypatch):
    # MME as its archive unpacks: a folder per category, each image's two yes/no questions in a .txt beside it (or in
    # questions_answers_YN/ beside images/). Given as questions_file it was "is a folder: the questions file is one
    # file"; its score (accuracy + acc+ per category, perception out of 2000) was nowhere
    import datasets

    from mmcaption.data.mme import mme_questions
    from mmcaption.errors import ConfigError
    from mmcaption.tasks import Tasks

    root = tmp_path / "MME_Benchmark_release_version"

    def image(where: Path, name: str, lines: list[tuple[str, str]], questions: Path | None = None) -> None:
        photos(image_folder, where, [name])
        (questions or where).mkdir(parents=True, exist_ok=True)
        (questions or where).joinpath(Path(name).stem + ".txt").write_text(
            "".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in lines) + "\n")  # its trailing blank line

    image(root / "existence", "a.jpg", [("Is there a shape?", "Yes"), ("Is there a dog?", "No")])
    (root / "existence" / "a.txt").write_bytes(b"\xef\xbb\xbf" + (root / "existence" / "a.txt").read_bytes().replace(b"\n", b"\r\n"))  # Windows
    image(root / "existence", "b.jpg", [("Is there a shape?", "Yes"), ("Is there a colour?", "Yes")])
    image(root / "code_reasoning", "c.png", [("Does it print 3?", "Yes"), ("Does it print 4?", "No")])
    image(root / "artwork" / "images", "d.jpg", [("Is it a painting?", "No"), ("Is it glassware?", "No")],
          questions=root / "artwork" / "questions_answers_YN")
    (root / "existence" / "._a.txt").write_bytes(b"\x00\x05\x16\x07")  # macOS's metadata of a.txt, unzipped beside it
    (tmp_path / "__MACOSX" / root.name / "existence").mkdir(parents=True)  # and its copy of the archive's folders
    (tmp_path / "__MACOSX" / root.name / "existence" / "._b.txt").write_bytes(b"\x00\x05\x16\x07")
    said = []  # caught where it is said: Lightning's logger may not propagate to pytest's
    monkeypatch.setattr("mmcaption.data.mme.rank_zero_info", said.append)
    monkeypatch.setattr("mmcaption.predictions.rank_zero_info", said.append)
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    # answers read as MME's evaluation reads them (yes or no in the first four characters), not matched exactly
    said_by_model = iter(["Yes, it is.", "No.", "The answer is yes", "yes", "Nope", "No", "y", "Yes"])
    monkeypatch.setattr(Tasks, "decode", lambda self, tokens: [next(said_by_model) for _ in tokens])
    output = tmp_path / "mme.jsonl"
    data = QuestionsPredictDataModule(questions_file=str(root), output=str(output), tokenizer=str(backbones[0]),
                                      image_processor=str(backbones[1]), batch_size=3, num_workers=0)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp_path).predict(module, datamodule=data)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["question_id"], r["category"], r["image"], r["answer"], r["error"]) for r in rows] == [
        ("existence/a.jpg", "existence", "MME_Benchmark_release_version/existence/a.jpg", "Yes", None),
        ("existence/a.jpg", "existence", "MME_Benchmark_release_version/existence/a.jpg", "No", None),
        ("existence/b.jpg", "existence", "MME_Benchmark_release_version/existence/b.jpg", "Yes", None),
        ("existence/b.jpg", "existence", "MME_Benchmark_release_version/existence/b.jpg", "Yes", None),
        ("artwork/d.jpg", "artwork", "MME_Benchmark_release_version/artwork/images/d.jpg", "No", None),
        ("artwork/d.jpg", "artwork", "MME_Benchmark_release_version/artwork/images/d.jpg", "No", None),
        ("code_reasoning/c.png", "code_reasoning", "MME_Benchmark_release_version/code_reasoning/c.png", "Yes", None),
        ("code_reasoning/c.png", "code_reasoning", "MME_Benchmark_release_version/code_reasoning/c.png", "No", None)]
    assert rows[0]["question"] == "Is there a shape? Please answer yes or no."
    summary = json.loads(Path(f"{output}.summary.json").read_text())
    mme = summary["mme"]
    # existence: 3 of 4 right ("The answer is yes" is neither), 1 of 2 images both right: 75 + 50; artwork ("Nope",
    # "No") 100 + 100; code reasoning ("y" right, "Yes" wrong) 50 + 0
    assert {name: s["score"] for name, s in mme["per_category"].items()} == {"existence": 125.0, "artwork": 200.0, "code_reasoning": 50.0}
    assert (mme["perception"]["score"], mme["perception"]["out_of"], mme["cognition"]["score"]) == (325.0, 2000, 50.0)
    assert "pope" not in summary and summary["accuracy"] == 3 / 8  # exact match: "No.", "yes", "No"
    [record] = summary["made_by"]["inputs"]  # the folder's question files, by one digest
    assert (record["path"], record["files"]) == (str(root.resolve()), 4)
    assert any("MME score (answers read as its evaluation reads them): perception 325.0 of 2000 (8 of its categories not "
               "asked), cognition 50.0 of 800 (3 of its categories not asked)" in note for note in said)
    assert any("MME's count, position, " in note and "(3 of its 14 categories have question files)" in note for note in said)

    # a run stopped between an image's two questions leaves that image out of the score, and says so
    said_by_model = iter(["Yes", "No", "Yes"])
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, limit_predict_batches=1,
            default_root_dir=tmp_path).predict(module, datamodule=QuestionsPredictDataModule(
                questions_file=str(root), output=str(tmp_path / "stopped.jsonl"), tokenizer=str(backbones[0]),
                image_processor=str(backbones[1]), batch_size=3, num_workers=0))
    mme = json.loads((tmp_path / "stopped.jsonl.summary.json").read_text())["mme"]
    assert (mme["per_category"]["existence"]["score"], mme["per_category"]["existence"]["images"], mme["images_left_out"]) == (200.0, 1, 1)

    # the archive's inner folder (MME_Benchmark_release_version/MME_Benchmark/) given from above it reads alike
    inner = tmp_path / "download"
    (inner / "MME_Benchmark_release_version").mkdir(parents=True)
    root.rename(inner / "MME_Benchmark_release_version" / "MME_Benchmark")
    assert len(mme_questions(inner / "MME_Benchmark_release_version")) == 8
    # a line that is not a question, a tab and Yes or No is named with its file and line, a file without MME's two
    # questions (an empty one) by its name; another folder is named
    broken = inner / "MME_Benchmark_release_version" / "MME_Benchmark" / "existence" / "a.txt"
    broken.write_text("Is there a shape? Please answer yes or no.\tYes\nIs there a dog? Please answer yes or no.\n")
    with pytest.raises(DataError, match=r"existence/a\.txt, line 2: MME's lines are a question, a tab and Yes or No"):
        mme_questions(inner)
    broken.write_text("")
    with pytest.raises(DataError, match=r"existence/a\.txt: 0 questions; MME asks two about each image"):
        mme_questions(inner)
    with pytest.raises(DataError, match=r"is a folder: questions are read from one file .* or from MME's release folder"):
        QuestionsPredictDataModule(questions_file=str(image_folder), output=str(tmp_path / "q.jsonl"), tokenizer=str(backbones[0]),
                                   image_processor=str(backbones[1])).check_inputs()

    # given to the multiple-choice module (yes/no as two options), it is named for the questions module
    from tests.test_benchmark_formats import choice_data

    with pytest.raises(ConfigError, match=r"is MME's release: yes/no questions, answered with --config configs/predict/questions\.yaml"):
        choice_data(backbones, inner, tmp_path / "c.csv").check_inputs()

    # lmms-lab's copy (a parquet, each question's image inside, question_id naming the image) is scored alike
    datasets.Dataset.from_list([
        {"question_id": "existence/a.jpg", "question": q, "answer": a, "category": "existence",
         "image": Image.open(image_folder / "img0.png").convert("RGB")} for q, a in (("Is there a shape?", "Yes"), ("A dog?", "No"))
    ]).to_parquet(str(tmp_path / "mme.parquet"))
    said_by_model = iter(["Yes", "Yes"])
    data = QuestionsPredictDataModule(questions_file=str(tmp_path / "mme.parquet"), output=str(tmp_path / "lmms.jsonl"),
                                      tokenizer=str(backbones[0]), image_processor=str(backbones[1]), num_workers=0)
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=tmp_path).predict(module, datamodule=data)
    mme = json.loads(Path(f"{tmp_path / 'lmms.jsonl'}.summary.json").read_text())["mme"]
    assert mme["per_category"]["existence"] == {"score": 50.0, "accuracy": 0.5, "accuracy_plus": 0.0, "images": 1}


def test_llavas_mme_questions_without_answers_point_to_mmes_release_for_its_score(tmp_path, monkeypatch):
    # LLaVA's llava_mme.jsonl holds MME's questions without their answers (its evaluation reads them from MME's release):
    # they were answered and not scored, without a word of where the score comes from
    from mmcaption.data.questions import read_questions

    said = []
    monkeypatch.setattr("mmcaption.data.mme.rank_zero_info", said.append)
    path = tmp_path / "llava_mme.jsonl"
    path.write_text("".join(json.dumps({"question_id": f"{c}/{n}.png", "image": f"{c}/{n}.png", "category": c,
                                        "text": "Is it? Please answer yes or no."}) + "\n" for c, n in (("OCR", 1), ("code_reasoning", 2))))
    read_questions(path)
    assert any("MME's questions without their answers (as LLaVA's llava_mme.jsonl): answered, not scored" in note
               and "--data.questions_file MME_Benchmark_release_version" in note for note in said)
    # with their answers, or with other categories, nothing is said
    said.clear()
    path.write_text(json.dumps({"image": "a.png", "question": "Is it?", "answer": "Yes", "category": "OCR"}) + "\n" +
                    json.dumps({"image": "b.png", "question": "Is it?", "category": "count"}) + "\n")
    read_questions(path)
    path.write_text(json.dumps({"image": "a.png", "question": "Is it?", "category": "popular"}) + "\n")
    read_questions(path)
    assert not said
