"""MMBench's TSV and ScienceQA's problems.json in ``mmcaption predict``: the readers, per-category accuracy
and MMBench's CircularEval, end to end on a tiny model rigged to prefer one answer."""

import base64
import csv
import hashlib
import io
import json
import random
import re
import shutil
from pathlib import Path

import pandas
import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from mmcaption.data import DataError, MultipleChoiceDataModule, benchmarks
from mmcaption.data.benchmarks import ChoiceQuestion, EmbeddedImage, circular_passes
from mmcaption.demo.synthetic import Scene, draw_scene
from mmcaption.errors import ConfigError
from mmcaption.evaluation.report import record_differences
from mmcaption.module import MultimodalCaptioner

from .conftest import REPO

# MMBench_DEV_EN.tsv's columns, in its order
MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
                   "comment", "split")
FINE, COARSE = "finegrained_perception (instance-level)", "coarse_perception"


def png(scene: Scene) -> bytes:
    out = io.BytesIO()
    draw_scene(scene, 64, random.Random(0)).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


RED, BLUE = png(Scene("red", "circle", "left")), png(Scene("blue", "square", "right", count=2))


def mmbench_rows() -> list[dict]:
    """Four questions as MMBench writes them (NaN for a missing hint or option), and a CircularEval pass of
    the first that the official TSVs carry as index + 1,000,000, its image the first's index."""
    common = {"source": "synthetic", "comment": "nan", "split": "dev"}
    return [
        {**common, "index": "0", "question": "What colour is the shape?", "hint": "The picture shows one shape.",
         "A": "red", "B": "blue", "C": "green", "D": "yellow", "answer": "B", "category": "attribute_recognition",
         "l2-category": FINE, "image": b64(BLUE)},
        {**common, "index": "1", "question": "What colour is the shape?", "hint": "nan", "A": "blue", "B": "red",
         "C": "green", "D": "yellow", "answer": "B", "category": "attribute_recognition", "l2-category": FINE,
         "image": b64(RED)},
        {**common, "index": "2", "question": "Which colour, with\ta tab?", "hint": "", "A": "green", "B": "yellow",
         "C": "blue", "D": "nan", "answer": "C", "category": "image_style", "l2-category": COARSE, "image": "1"},
        {**common, "index": "3", "question": "Which colour?", "hint": "nan", "A": "blue", "B": "red", "C": "", "D": "",
         "answer": "A", "category": "image_scene", "l2-category": COARSE, "image": b64(b"base64, but not an image" * 4)},
        {**common, "index": "1000000", "question": "What colour is the shape?", "hint": "The picture shows one shape.",
         "A": "blue", "B": "green", "C": "yellow", "D": "red", "answer": "A", "category": "attribute_recognition",
         "l2-category": FINE, "image": "0"},
    ]


def write_tsv(path: Path, rows: list[dict], columns=MMBENCH_COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:  # as pandas' to_csv(sep="\t") quotes
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def problem(question, choices, answer, split="test", image="image.png", hint="", subject="natural science", **extra) -> dict:
    return {"question": question, "choices": choices, "answer": answer, "hint": hint, "image": image, "split": split,
            "subject": subject, "topic": "physics", "category": "Colours", "grade": "grade3", "task": "closed choice",
            "lecture": "", "solution": "", **extra}


def write_scienceqa(root: Path, problems: dict[str, dict], images: Path | None = None) -> Path:
    """problems.json as the official release has it, and its images in ``images/<split>/<id>/image.png``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems))
    for pid, p in problems.items():
        if p["image"]:
            folder = (images or root / "images") / p["split"] / pid
            folder.mkdir(parents=True, exist_ok=True)
            (folder / p["image"]).write_bytes(BLUE)
    return root / "problems.json"


SCIENCEQA = {
    "5": problem("Which colour is the square?", ["blue", "red", "green"], 0, hint="The square is in the picture."),
    "9": problem("Which colour is it?", ["red", "blue"], 1),
    "12": problem("Which of these states is farthest north?", ["Ohio", "Texas", "Maine", "Utah"], 2, subject="social science",
                  category="Geography", grade="grade5"),
    "20": problem("Which word is a noun?", ["run", "dog"], 1, image=None, subject="language science"),  # text only
    "31": problem("Which colour?", ["red", "blue"], 0, split="train"),  # another split
}


def choice_data(backbones, path, output, **settings) -> MultipleChoiceDataModule:
    return MultipleChoiceDataModule(csv_file=str(path), output=str(output), tokenizer=str(backbones[0]),
                                    image_processor=str(backbones[1]), batch_size=4, num_workers=0, **settings)


def predictor(tmp_path) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


def rigged(checkpoint, token: str) -> MultimodalCaptioner:
    """The trained tiny model with ``token`` made far likelier than any other, whatever came before."""
    module = MultimodalCaptioner.load_from_checkpoint(checkpoint)
    planted = module.tokenizer(token, add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        module.model.language_model.get_base_model().lm_head.bias[planted] += 30.0
    return module


def read_output(output: Path) -> tuple[list[dict], dict]:
    with output.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows, json.loads(output.with_name(output.name + ".summary.json").read_text())


def test_mmbench_tsv_is_read_with_hints_letters_categories_shared_images_and_without_its_circular_passes(backbones, tmp_path):
    path = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", mmbench_rows())
    questions = choice_data(backbones, path, tmp_path / "o.csv", format="mmbench").read_rows()
    assert [q.key for q in questions] == ["0", "1", "2", "3"]  # index 1000000 is a CircularEval pass of 0: not a question
    assert [(k, p.key, p.options, p.answer) for k, p in questions[0].passes] == [(1, "1000000", ["blue", "green", "yellow", "red"], "A")]
    assert questions[0].passes[0][1].image.data == BLUE and not questions[1].passes  # its image is question 0's
    assert questions[0].question == "The picture shows one shape.\nWhat colour is the shape?"
    assert questions[1].question == "What colour is the shape?"  # hint NaN
    assert questions[2].question == "Which colour, with\ta tab?"  # hint empty; a quoted tab stays in its field
    assert [q.options for q in questions] == [["red", "blue", "green", "yellow"], ["blue", "red", "green", "yellow"],
                                              ["green", "yellow", "blue"], ["blue", "red"]]
    assert [q.answer for q in questions] == ["B", "B", "C", "A"]
    assert isinstance(questions[0].image, EmbeddedImage) and questions[0].image.data == BLUE
    assert questions[2].image.data == RED  # its image field names row 1, whose image it shares
    assert str(questions[3].image) == f"in {path}, index 3"
    record = questions[2].record
    assert "image" not in record and record["D"] == "" and record["hint"] == "" and record["comment"] == ""
    assert (record["category"], record["l2-category"], record["answer"], record["index"]) == ("image_style", COARSE, "C", "2")
    assert [q.line for q in questions] == [2, 3, 4, 5]

    without_answers = write_tsv(tmp_path / "test.tsv", mmbench_rows()[:2], columns=[c for c in MMBENCH_COLUMNS if c != "answer"])
    assert [q.answer for q in choice_data(backbones, without_answers, tmp_path / "o.csv", format="mmbench").read_rows()] == [None, None]


def test_mmbench_from_its_hugging_face_parquet_reads_as_its_tsv(backbones, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # lmms-lab/MMBench's parquet: an integer index, nulls for missing options and hints, the image as datasets stores
    # one ({"bytes", "path"}), L2-category capitalised; it was taken for ScienceQA and refused
    rows = [row for row in mmbench_rows() if row["index"] in ("0", "1")]
    table = pa.table({
        "index": [int(row["index"]) for row in rows], "question": [row["question"] for row in rows],
        "hint": [None if row["hint"] == "nan" else row["hint"] for row in rows],
        **{letter: [row[letter] for row in rows] for letter in "ABCD"}, "answer": [row["answer"] for row in rows],
        "category": [row["category"] for row in rows],
        "image": [{"bytes": base64.b64decode(row["image"]), "path": None} for row in rows],
        "source": [row["source"] for row in rows], "L2-category": [row["l2-category"] for row in rows],
        "comment": [None, None], "split": ["dev", "dev"]})
    path = tmp_path / "dev-00000-of-00001.parquet"
    pq.write_table(table, path)
    questions = choice_data(backbones, path, tmp_path / "o.csv", format="mmbench").read_rows()
    expected = choice_data(backbones, write_tsv(tmp_path / "dev.tsv", rows), tmp_path / "o.csv", format="mmbench").read_rows()
    assert [(q.key, q.question, q.options, q.answer, q.image.data) for q in questions] == [
        (q.key, q.question, q.options, q.answer, q.image.data) for q in expected]
    assert questions[0].record["L2-category"] == FINE and questions[1].record["hint"] == ""
    with pytest.raises(ConfigError, match=r"is a parquet file with MMBench's columns, so it reads as MMBench TSV: use --config "
                                          r"configs/predict/mmbench.yaml"):
        choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa").read_rows()


def test_mmbench_parquet_written_by_datasets_from_image_files_reads_them_from_their_paths(backbones, tmp_path, monkeypatch):
    import datasets

    # a user's own MMBench-style set, its images loaded from files: datasets' to_parquet keeps each image's path and
    # no bytes, and every row was refused ("image '/.../blue.png' is neither base64 image data nor the index of a row")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "blue.png").write_bytes(BLUE)
    (photos / "red.png").write_bytes(RED)
    rows = [row for row in mmbench_rows() if row["index"] in ("0", "1")]
    columns = {name: [row[name] for row in rows] for name in MMBENCH_COLUMNS if name != "image"}
    monkeypatch.chdir(tmp_path)  # relative paths, as given to cast_column: relative to the parquet file's folder here
    for given, stored in ((str(photos / "blue.png"), str(photos / "blue.png")), ("photos/blue.png", "photos/blue.png")):
        table = datasets.Dataset.from_dict({**columns, "image": [given, "photos/red.png"]}).cast_column("image", datasets.Image())
        path = tmp_path / "mine.parquet"
        table.to_parquet(str(path))
        dm = choice_data(backbones, path, tmp_path / "o.csv", format="mmbench")
        questions = dm.read_rows()
        assert [q.image for q in questions] == [stored, "photos/red.png"]
        assert [(q.key, q.options, q.answer) for q in questions] == [("0", ["red", "blue", "green", "yellow"], "B"),
                                                                      ("1", ["blue", "red", "green", "yellow"], "B")]
        dm.setup("predict")
        expected = choice_data(backbones, write_tsv(tmp_path / "dev.tsv", rows), tmp_path / "o.csv", format="mmbench")
        expected.setup("predict")
        for i in (0, 1):
            assert dm.dataset[i]["error"] is None
            assert torch.equal(dm.dataset[i]["pixel_values"], expected.dataset[i]["pixel_values"])
    (photos / "blue.png").unlink()  # a file gone since: that row's error, the other answered
    dm = choice_data(backbones, path, tmp_path / "o.csv", format="mmbench")
    dm.setup("predict")
    assert dm.dataset[0]["error"] == f"image not found: {photos / 'blue.png'}" and dm.dataset[1]["error"] is None


def test_scienceqa_reads_the_image_questions_of_one_split_with_their_context_and_subject(backbones, tmp_path, monkeypatch):
    path = write_scienceqa(tmp_path / "data" / "scienceqa", SCIENCEQA)
    dm = choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa")  # split: test by default
    questions = dm.read_rows()
    assert [q.key for q in questions] == ["5", "9", "12"]  # 20 has no image, 31 is in train
    assert questions[0].question == "Context: The square is in the picture.\nWhich colour is the square?"
    assert questions[1].question == "Which colour is it?"  # no hint, no context
    assert [q.answer for q in questions] == ["A", "B", "C"]
    assert questions[2].options == ["Ohio", "Texas", "Maine", "Utah"]
    record = questions[2].record
    assert (record["subject"], record["category"], record["grade"], record["split"]) == ("social science", "Geography", "grade5", "test")
    assert (record["A"], record["D"], questions[1].record["C"], record["image"]) == ("Ohio", "Utah", "", "test/12/image.png")
    dm.setup("predict")  # images from images/ beside problems.json, as the official release puts them
    assert dm.dataset.image_paths[0] == path.parent / "images" / "test" / "5" / "image.png"
    assert dm.dataset[0]["error"] is None

    said = []  # what it tells the user, caught where it is said: Lightning's logger may not propagate to pytest's
    monkeypatch.setattr(benchmarks, "rank_zero_info", said.append)
    every = choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa", split=None).read_rows()
    assert [q.key for q in every] == ["5", "9", "12", "31"]
    assert any(f"{path} (every split): 4 of its " in line for line in said), said  # it was "(split None)"
    with pytest.raises(DataError, match=r"problems\.json has no split 'val' \(its splits: test, train; pid_splits\.json, which lists "
                                        r"the mini splits, is not beside it\)"):
        choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa", split="val").read_rows()
    # the split's own folder given, as LLaVA's scripts take it (--image-folder images/test): the message named the folder
    # as the file's own, and not the one that holds the images
    with pytest.raises(DataError, match=r"Images are relative to .*images/test \(given by --data.image_root\); it is under "
                                        r".*images: give that folder"):
        choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa", image_root=str(path.parent / "images" / "test")).setup("predict")
    beside = write_scienceqa(tmp_path / "flat", SCIENCEQA, images=tmp_path / "flat")  # problems.json beside test/
    dm = choice_data(backbones, beside, tmp_path / "o.csv", format="scienceqa")
    dm.setup("predict")
    assert dm.dataset.image_paths[0] == beside.parent / "test" / "5" / "image.png"


def notes(monkeypatch) -> list[str]:
    """What the readers say in notes (Lightning's rank-zero logger does not reach pytest's log capture in every worker)."""
    said: list[str] = []
    monkeypatch.setattr("mmcaption.data.benchmarks.rank_zero_info", said.append)
    return said


def test_scienceqa_mini_splits_from_pid_splits_and_the_text_only_questions_counted(backbones, tmp_path, monkeypatch):
    path = write_scienceqa(tmp_path / "data" / "scienceqa", SCIENCEQA)
    # the release's pid_splits.json lists its splits, with the mini ones problems.json does not name
    (path.parent / "pid_splits.json").write_text(json.dumps({"test": ["5", "9", "12", "20"], "minitest": ["12", "20", "5"]}))
    said = notes(monkeypatch)
    questions = choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa", split="minitest").read_rows()
    assert [q.key for q in questions] == ["12", "5"]  # in the list's order; 20 is text only
    assert questions[0].record["split"] == "test" and questions[0].image == "test/12/image.png"  # the images stay under test/
    assert any("2 of its 3 questions have an image; the 1 text-only ones are left out" in note for note in said)
    (path.parent / "pid_splits.json").write_text(json.dumps({"minitest": ["12", "404"]}))
    with pytest.raises(DataError, match=r"pid_splits\.json lists problem\(s\) 404 of split 'minitest' that .*problems\.json does not have"):
        choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa", split="minitest").read_rows()


def test_scienceqa_from_the_hugging_face_parquet_files_with_their_images_inside(backbones, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # derek-thomas/ScienceQA: a parquet file per split, the image a {bytes, path} struct (null when text only)
    columns = ("question", "choices", "answer", "hint", "task", "grade", "subject", "topic", "category", "skill", "lecture", "solution")
    rows = [{"image": None if p["image"] is None else {"bytes": BLUE, "path": None}, "skill": "colours",
             **{k: p.get(k, "") for k in columns if k != "skill"}} for pid, p in SCIENCEQA.items() if p["split"] == "test"]
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"test-00000-of-00001\.parquet is split 'test' \(a parquet file of ScienceQA's Hugging "
                                        r"Face copy holds one split\), not 'minitest'.*--data\.split test"):
        choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa", split="minitest").read_rows()
    dm = choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa")  # split test, the file's
    said = notes(monkeypatch)
    questions = dm.read_rows()
    assert any("3 of its 4 questions have an image; the 1 text-only ones are left out" in note for note in said)
    assert [q.answer for q in questions] == ["A", "B", "C"]
    assert questions[0].question == "Context: The square is in the picture.\nWhich colour is the square?"
    assert questions[2].record["subject"] == "social science" and questions[2].record["split"] == "test"
    assert isinstance(questions[0].image, EmbeddedImage) and questions[0].image.data == BLUE
    dm.setup("predict")  # no image folder needed
    assert dm.dataset[0]["error"] is None and dm.dataset[0]["pixel_values"].shape[-1] == 64
    assert [q.key for q in choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa", split=None).read_rows()] == ["0", "1", "2"]
    # the name datasets' to_parquet("test.parquet") gives is that split's too (was "not named after a split, not 'test'")
    named = Path(shutil.copy(path, tmp_path / "test.parquet"))
    assert len(choice_data(backbones, named, tmp_path / "o.csv", format="scienceqa").read_rows()) == 3
    # an image stored as a file's path instead of its bytes, as datasets' to_parquet writes an image loaded from a file, is
    # read from that file (it was refused: "its image column holds no image bytes but '/...'"); a relative one from the
    # parquet file's folder; one whose file is gone is that row's error, named
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "red.png").write_bytes(RED)
    rows[0]["image"] = {"bytes": None, "path": str(tmp_path / "photos" / "red.png")}
    rows[1]["image"] = {"bytes": None, "path": "photos/gone.png"}
    rows[2]["image"] = {"bytes": None, "path": "photos/red.png"}
    pq.write_table(pa.Table.from_pylist(rows), path)
    dm = choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa")
    questions = dm.read_rows()
    assert [q.image for q in questions] == [str(tmp_path / "photos" / "red.png"), "photos/gone.png", "photos/red.png"]
    assert questions[2].record["image"] == "photos/red.png"
    dm.setup("predict")
    assert dm.dataset[0]["error"] is None and dm.dataset[2]["error"] is None
    assert dm.dataset[1]["error"] == f"image not found: {tmp_path / 'photos' / 'gone.png'}"
    reference = choice_data(backbones, named, tmp_path / "o.csv", format="scienceqa")  # the same rows, BLUE's bytes inside
    reference.setup("predict")
    assert not torch.equal(dm.dataset[0]["pixel_values"], reference.dataset[0]["pixel_values"])  # RED's pixels, read
    (tmp_path / "photos" / "blue.png").write_bytes(BLUE)
    rows[2]["image"] = {"bytes": None, "path": "blue.png"}
    pq.write_table(pa.Table.from_pylist(rows), path)
    dm = choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa", image_root=str(tmp_path / "photos"))
    dm.setup("predict")  # relative to --data.image_root where it is given
    assert torch.equal(dm.dataset[2]["pixel_values"], reference.dataset[2]["pixel_values"])
    # an image column of something else (text) is refused with its row, not counted as text only
    for row in rows:
        row["image"] = "no image here"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"test-00000-of-00001\.parquet, row 0: its image column holds neither image bytes nor a "
                                        r"file's path but 'no image here'"):
        choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa").read_rows()
    # a file that is not parquet is named
    bad = tmp_path / "test-00000-of-00002.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match=r"test-00000-of-00002\.parquet: not a parquet file"):
        choice_data(backbones, bad, tmp_path / "o.csv", format="scienceqa").read_rows()


def test_mmbench_passes_grouped_by_g_index_where_a_row_has_one_else_by_index(backbones, tmp_path):
    rows = mmbench_rows()  # question 0's pass 1000000, and a pass of question 1 that names it by g_index only
    rows.append({**rows[1], "index": "77", "image": "1", "A": "red", "B": "blue", "answer": "A"})
    for row in rows:
        row["g_index"] = "1" if row["index"] == "77" else ""  # VLMEvalKit's column, empty where index % 1e6 says it
    path = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows, columns=(*MMBENCH_COLUMNS, "g_index"))
    questions = choice_data(backbones, path, tmp_path / "o.csv", format="mmbench").read_rows()
    assert [(q.key, [(k, p.key) for k, p in q.passes]) for q in questions] == [("0", [(1, "1000000")]), ("1", [(1, "77")]),
                                                                               ("2", []), ("3", [])]


def test_circular_passes_rotate_the_options_and_move_the_answer_with_them():
    record = {"index": "7", "A": "red", "B": "blue", "C": "green", "D": "", "answer": "B", "category": "colour"}
    question = ChoiceQuestion(3, record, "x.png", "Which?", ["red", "blue", "green"], "B", key="7", option_keys=("A", "B", "C", "D"))
    passes = circular_passes([question])
    assert [p.options for p in passes] == [["red", "blue", "green"], ["blue", "green", "red"], ["green", "red", "blue"]]
    assert [p.answer for p in passes] == ["B", "A", "C"]  # always "blue"
    assert [(p.record["A"], p.record["B"], p.record["C"], p.record["D"], p.record["answer"]) for p in passes] == [
        ("red", "blue", "green", "", "B"), ("blue", "green", "red", "", "A"), ("green", "red", "blue", "", "C")]
    assert [(p.record["circular_index"], p.record["rotation"]) for p in passes] == [("7", 0), ("7", 1), ("7", 2)]
    # each row its own index, as MMBench's TSVs number their passes: its server grades rows by index, and all four
    # rows had question 7's (graded against the unrotated answer)
    assert [p.record["index"] for p in passes] == ["7", "1000007", "2000007"]
    # a sheet's own columns are not renumbered (pandas' index under an empty header, a CSV's own "index")
    sheet = ChoiceQuestion(3, {"": "17", "Index": "4"}, "x.png", "Which?", ["red", "blue"], "B", option_keys=("A", "B"))
    assert [(p.record[""], p.record["Index"]) for p in circular_passes([sheet])] == [("17", "4"), ("17", "4")]
    assert question.record == record  # the question itself is left as it was


def test_mmbench_circular_eval_with_a_model_that_always_picks_blue(backbones, trained_checkpoint, tmp_path):
    module = rigged(trained_checkpoint, " blue")  # likelihood scoring: the option "blue", wherever it is
    path = write_tsv(tmp_path / "own.tsv", mmbench_rows()[:4])  # a TSV without passes of its own: every rotation asked
    output = tmp_path / "mmbench.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, path, output, format="mmbench", circular=True))
    rows, summary = read_output(output)
    assert [(r["circular_index"], r["rotation"]) for r in rows] == [
        (str(q), str(r)) for q, n in ((0, 4), (1, 4), (2, 3), (3, 2)) for r in range(n)]
    assert all(r[r["prediction"]] == "blue" for r in rows if r["prediction"])  # every pass chose blue
    assert [r["correct"] for r in rows] == ["True"] * 4 + ["False"] * 4 + ["True"] * 3 + ["False"] * 2
    assert all(f"image in {path}, index 3 cannot be decoded" in r["error"] for r in rows[-2:])
    # 7 of 13 passes right; questions 0 and 2 right in every rotation, 1 never, 3 (its image unreadable) counted wrong
    assert (summary["correct"], summary["answered"], summary["accuracy"]) == (7, 13, 7 / 13)
    assert (summary["circular_correct"], summary["circular_questions"], summary["circular_accuracy"]) == (2, 4, 0.5)
    assert summary["per_category"] == {
        "attribute_recognition": {"correct": 1, "answered": 2, "accuracy": 0.5},
        "image_scene": {"correct": 0, "answered": 1, "accuracy": 0.0},
        "image_style": {"correct": 1, "answered": 1, "accuracy": 1.0},
    }
    assert summary["per_l2_category"] == {COARSE: {"correct": 1, "answered": 2, "accuracy": 0.5},
                                          FINE: {"correct": 1, "answered": 2, "accuracy": 0.5}}
    assert summary["per_category_over"].startswith("questions")
    assert summary["errors"] == 2 and summary["unanswered"] == 2
    assert summary["made_by"]["inputs"] == [{"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                             "bytes": path.stat().st_size}]  # a resume tells rows appended from an edit by it
    # what made the rows: the format and CircularEval, and no split (ScienceQA's setting: "split": "test" was recorded)
    assert summary["made_by"]["settings"]["format"] == "mmbench" and "split" not in summary["made_by"]["settings"]

    # stopped after 6 of the 13 passes: question 1 asked in 2 of its 4 rotations, both right for "blue" there. It was
    # counted right under every rotation (2/2 questions) before its other rotations were asked
    short = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tmp_path, limit_predict_batches=2)
    data = MultipleChoiceDataModule(csv_file=str(path), output=str(tmp_path / "short.csv"), tokenizer=str(backbones[0]),
                                    image_processor=str(backbones[1]), batch_size=3, num_workers=0, format="mmbench", circular=True)
    short.predict(module, datamodule=data)
    _, summary = read_output(tmp_path / "short.csv")
    assert summary["rows"] == 6 and (summary["circular_correct"], summary["circular_questions"]) == (1, 1)
    assert summary["circular_unfinished"] == 1


def test_per_l2_category_whatever_the_case_of_its_column(backbones, trained_checkpoint, tmp_path):
    # lmms-lab's MMBench copy names the column "L2-category": the summary had per_category and, silently, no
    # per_l2_category. The column keeps its name in the output
    rows = [{("L2-category" if name == "l2-category" else name): value for name, value in row.items()}
            for row in mmbench_rows()[:2]]
    columns = tuple("L2-category" if name == "l2-category" else name for name in MMBENCH_COLUMNS)
    path, output = write_tsv(tmp_path / "capital.tsv", rows, columns), tmp_path / "capital.csv"
    predictor(tmp_path).predict(rigged(trained_checkpoint, " blue"), datamodule=choice_data(backbones, path, output, format="mmbench"))
    rows, summary = read_output(output)
    assert "L2-category" in rows[0] and "l2-category" not in rows[0]
    assert summary["per_l2_category"] == {FINE: {"correct": 1, "answered": 2, "accuracy": 0.5}}


@pytest.mark.parametrize("method", ["likelihood", "generation"])
def test_a_question_longer_than_the_language_models_context_is_not_asked_and_its_row_says_why(backbones, trained_checkpoint,
                                                                                              tmp_path, method, monkeypatch):
    # a long hint or 300-word options past Phi-2's 2,048 tokens: every row got a letter, scores and no error, and counted
    # in the accuracy, although the model read positions it never learned (the Python API refuses the same question)
    rows = mmbench_rows()[:3]
    rows[1]["hint"] = "The picture shows one shape among many others. " * 40
    rows[2]["A"] = "a colour between red and orange, " * 30 + "red"
    path, output = write_tsv(tmp_path / "long.tsv", rows), tmp_path / f"{method}.csv"
    module = rigged(trained_checkpoint, " blue")
    widths = []  # and the rows not asked do not pad the others to their width (a 4,000-word question cost 43 s a batch)
    generate = type(module.model).generate
    monkeypatch.setattr(type(module.model), "generate", lambda self, ids, *a, **k: widths.append(ids.shape[1]) or generate(self, ids, *a, **k))
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, path, output, format="mmbench", method=method))
    assert all(width < 100 for width in widths), widths
    rows, summary = read_output(output)
    assert rows[0]["error"] == "" and rows[0]["prediction"] == "B"
    assert rows[1]["prediction"] == "" and rows[1]["correct"] == "False"
    assert re.fullmatch(r"not asked: the question takes \d{3},?\d* tokens with the prompt(?: and its longest option)?, and the "
                        r"language model reads 256 at most", rows[1]["error"])
    # its long option does not fit either: scored after the prompt, or listed in it to generate a letter
    assert rows[2]["error"].startswith("not asked") and rows[2]["prediction"] == ""
    assert ("and its longest option" in rows[2]["error"]) == (method == "likelihood")
    assert summary["errors"] == 2 and summary["correct"] == 1


def test_mmbench_circular_eval_asks_the_passes_the_file_has_as_vlmevalkit_does(backbones, trained_checkpoint, tmp_path):
    module = rigged(trained_checkpoint, " blue")
    rows = mmbench_rows()
    # question 0 with all three of its passes (rotations 1-3, the answer moved with "blue"); question 1 has
    # none, as MMBench leaves some questions single: asked once; 2 and 3 are not in this file
    first = rows[0]
    rotated = [{**first, "index": str(k * 1_000_000), "image": "0", "answer": "BADC"[k],
                **dict(zip("ABCD", ["red", "blue", "green", "yellow"][k:] + ["red", "blue", "green", "yellow"][:k]))} for k in (3, 1, 2)]
    path = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", [first, rows[1], *rotated])
    output = tmp_path / "mmbench.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, path, output, format="mmbench", circular=True))
    rows, summary = read_output(output)
    # each row as the file has it, with its own index (what MMBench's server grades), in the order of the passes
    assert [(r["index"], r["circular_index"], r["rotation"]) for r in rows] == [
        ("0", "0", "0"), ("1000000", "0", "1"), ("2000000", "0", "2"), ("3000000", "0", "3"), ("1", "1", "0")]
    # the output is what MMBench's evaluation server takes (it reads .csv as .xlsx): read with pandas, the columns it
    # requires (index, prediction, A-D; question to tell MMBench from MMBench-CN) are there, a letter per prediction
    frame = pandas.read_csv(output)
    assert {"index", "question", "prediction", *"ABCD"} <= set(frame.columns)
    assert list(frame["index"]) == [0, 1000000, 2000000, 3000000, 1]
    assert [frame.loc[i, letter] for i, letter in enumerate(frame["prediction"])] == ["blue"] * 5
    assert [r["A"] for r in rows] == ["red", "blue", "green", "yellow", "blue"]
    assert [r["correct"] for r in rows] == ["True"] * 4 + ["False"]  # blue every time; question 1's answer is red
    assert (summary["circular_correct"], summary["circular_questions"], summary["circular_accuracy"]) == (1, 2, 0.5)


def test_scienceqa_with_a_model_that_always_answers_letter_a_is_never_right_under_circular_eval(backbones, trained_checkpoint, tmp_path):
    module = rigged(trained_checkpoint, "A")  # generation: the letter A, and nothing else
    module.generation = {"max_new_tokens": 1}
    path = write_scienceqa(tmp_path / "data" / "scienceqa", SCIENCEQA)

    output = tmp_path / "plain.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, path, output, format="scienceqa", method="generation"))
    rows, summary = read_output(output)
    assert [r["prediction"] for r in rows] == ["A", "A", "A"] and [r["id"] for r in rows] == ["5", "9", "12"]
    assert (summary["correct"], summary["answered"]) == (1, 3) and "circular_accuracy" not in summary
    assert summary["made_by"]["settings"]["split"] == "test"  # the split its questions were read from
    # per subject and grade, as ScienceQA's paper reports (the subjects were called categories, beside its own 'category')
    assert summary["per_subject"] == {"natural science": {"correct": 1, "answered": 2, "accuracy": 0.5},
                                      "social science": {"correct": 0, "answered": 1, "accuracy": 0.0}}
    assert summary["per_grade"] == {"grade3": {"correct": 1, "answered": 2, "accuracy": 0.5},
                                    "grade5": {"correct": 0, "answered": 1, "accuracy": 0.0}}
    assert summary["per_grades"] == {"G1-6": {"correct": 1, "answered": 3, "accuracy": pytest.approx(1 / 3)}}  # the paper's columns
    # and its TXT column (the questions with a text context; its IMG column is every question here)
    assert [r["context"] for r in rows] == ["text and image", "image only", "image only"]  # problem 5 has a hint
    assert summary["per_context"] == {"text and image": {"correct": 1, "answered": 1, "accuracy": 1.0},
                                      "image only": {"correct": 0, "answered": 2, "accuracy": 0.0}}
    eighth = write_scienceqa(tmp_path / "eighth", {"1": problem("Which?", ["a", "b"], 0, grade="grade8")})
    assert choice_data(backbones, eighth, tmp_path / "o.csv", format="scienceqa").read_rows()[0].record["grades"] == "G7-12"
    assert "per_category" not in summary and summary["per_category_over"] == "rows" and (rows[2]["category"], rows[2]["grade"]) == ("Geography", "grade5")

    output = tmp_path / "circular.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, path, output, format="scienceqa", method="generation",
                                                               circular=True))
    rows, summary = read_output(output)
    assert len(rows) == 3 + 2 + 4 and all(r["prediction"] == "A" for r in rows)
    # right only in the rotation that brings the answer to A: one pass of each question, no question in every one
    assert [r["rotation"] for r in rows if r["correct"] == "True"] == ["0", "1", "2"]
    assert (summary["correct"], summary["answered"], summary["accuracy"]) == (3, 9, 1 / 3)
    assert (summary["circular_correct"], summary["circular_questions"], summary["circular_accuracy"]) == (0, 3, 0.0)
    assert summary["per_subject"] == {"natural science": {"correct": 0, "answered": 2, "accuracy": 0.0},
                                      "social science": {"correct": 0, "answered": 1, "accuracy": 0.0}}


def test_an_option_spelled_nan_is_an_option_and_pandas_missing_values_are_not(backbones, tmp_path):
    # "Who holds the baby? A. Nan (the grandmother)": an option written Nan, NAN or naN was taken for pandas' NaN and
    # dropped, the question asked with 3 options and its answer D "not one of A, B, C"
    rows = mmbench_rows()[:2]
    rows[0] = {**rows[0], "A": "Grandpa", "B": "Mum", "C": "Dad", "D": "Nan", "answer": "D"}
    rows[1] = {**rows[1], "C": "NaN", "D": "nan"}  # as pandas and numpy write a missing value: no option
    questions = choice_data(backbones, write_tsv(tmp_path / "dev.tsv", rows), tmp_path / "o.csv", format="mmbench").read_rows()
    assert [q.options for q in questions] == [["Grandpa", "Mum", "Dad", "Nan"], [rows[1]["A"], rows[1]["B"]]]
    assert questions[0].answer == "D"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"question": "nan"}, r"index 1 \(line 3\): empty question"),
        ({"B": "nan", "C": "", "D": ""}, r"index 1 \(line 3\): options must be 2 or more"),
        ({"C": "nan"}, r"index 1 \(line 3\): options must be 2 or more, without gaps"),
        ({"answer": "E"}, r"index 1 \(line 3\): answer 'E' is not one of A, B, C, D"),
        ({"image": "%%%" + "not base64 " * 10}, r"index 1 \(line 3\): image is not base64"),
        ({"image": "42"}, r"index 1 \(line 3\): image '42' is neither base64 image data nor the index of a row"),
        ({"index": "0"}, r"index 0 \(line 3\): the index appears again \(first on line 2\)"),
    ],
    ids=["no question", "one option", "gap", "answer names no option", "not base64", "unknown image reference", "duplicate index"],
)
def test_bad_mmbench_rows_are_refused_with_the_file_and_index(backbones, tmp_path, change, message):
    rows = mmbench_rows()[:3]
    rows[1] = {**rows[1], **change}
    path = write_tsv(tmp_path / "bad.tsv", rows)
    with pytest.raises(DataError, match=rf"bad\.tsv, {message}"):
        choice_data(backbones, path, tmp_path / "o.csv", format="mmbench").read_rows()


def test_bad_files_and_settings_are_refused_with_what_is_wrong(backbones, tmp_path):
    no_image = write_tsv(tmp_path / "no_image.tsv", mmbench_rows(), columns=[c for c in MMBENCH_COLUMNS if c != "image"])
    with pytest.raises(DataError, match=r"no_image\.tsv lacks column\(s\) \['image'\]"):
        choice_data(backbones, no_image, tmp_path / "o.csv", format="mmbench").read_rows()
    path = write_scienceqa(tmp_path / "sqa", {**SCIENCEQA, "12": {**SCIENCEQA["12"], "answer": 4}})
    with pytest.raises(DataError, match=r"problems\.json, problem 12: answer 4 is not the index of one of its 4 choices"):
        choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa").read_rows()
    path = tmp_path / "problems.json"
    path.write_text(json.dumps({"1": problem("Which?", ["a", "b"], 0, image="../../../etc/passwd")}))
    with pytest.raises(DataError, match=r"problems\.json, problem 1: .*image folder"):
        choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa").read_rows()
    path = write_scienceqa(tmp_path / "no_images", SCIENCEQA, images=tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"no ScienceQA image folder\(s\) test/ in .*: give the folder that holds them"):
        choice_data(backbones, path, tmp_path / "o.csv", format="scienceqa").setup("predict")
    with pytest.raises(DataError, match=r"MMBench TSV not found: .*missing\.tsv"):
        choice_data(backbones, tmp_path / "missing.tsv", tmp_path / "o.csv", format="mmbench").check_inputs()
    # a benchmark file given to another format's reader: named for what it is, with the config that reads it (each
    # reader said only which of its own columns were missing, or "not UTF-8" for a parquet file)
    mmbench = write_tsv(tmp_path / "MMBench_DEV_EN.tsv", mmbench_rows())
    scienceqa = write_scienceqa(tmp_path / "right", SCIENCEQA)
    parquet = tmp_path / "test.parquet"
    parquet.write_bytes(b"PAR1" + bytes(range(256)))
    free_form = tmp_path / "questions.jsonl"
    free_form.write_text('{"image": "x.png", "question": "What?"}\n{"image": "y.png", "question": "Which?"}\n')
    original = tmp_path / "questions.csv"
    original.write_text("img_path,Question,A,B,C,D,answer\nx.png,Which?,a,b,c,d,A\n")
    for path, given, wanted in [(mmbench, "csv", r"has MMBench's tab-separated columns, so it reads as MMBench TSV: use --config "
                                 r"configs/predict/mmbench\.yaml \(or --data.format mmbench\); data.format is 'csv'"),
                                (scienceqa, "csv", r"is a JSON object, so it reads as ScienceQA .*configs/predict/scienceqa\.yaml"),
                                (free_form, "csv", r"questions\.jsonl holds JSON records \(a list, or one per line\): free-form "
                                 r"questions, answered with --config configs/predict/questions\.yaml --data\.questions_file"),
                                (free_form, "scienceqa", r"free-form questions"),
                                (parquet, "csv", r"is a parquet file, so it reads as ScienceQA"),
                                (original, "mmbench", r"has the original scripts' columns, .*configs/predict/multiple_choice\.yaml"),
                                (mmbench, "scienceqa", r"reads as MMBench TSV")]:
        with pytest.raises(ConfigError, match=wanted):
            choice_data(backbones, path, tmp_path / "o.csv", format=given).read_rows()
    # ... and the other way: the original scripts' multiple-choice CSV answered as free-form questions lost its options
    # and compared the answers with letters, 0% without a word
    from mmcaption.data.questions import QuestionsPredictDataModule

    quoted = tmp_path / "quoted.csv"  # R's write.csv, csv.QUOTE_ALL: the header in quotes too
    quoted.write_text('"img_path","Question","A","B","C","D","answer"\n"x.png","Which?","a","b","c","d","A"\n')
    mac = tmp_path / "mac.csv"  # Excel for Mac's "CSV (Macintosh)": lines end in \r alone (a csv.Error was raised)
    mac.write_bytes(b"img_path,Question,A,B,C,D,answer\rx.png,Which?,a,b,c,d,A\r")
    semicolons = tmp_path / "semicolons.csv"  # Excel's "CSV" where the comma is the decimal mark
    semicolons.write_text("img_path;Question;A;B;C;D;answer\nx.png;Which?;a;b;c;d;A\n")
    headed_image = tmp_path / "headed_image.csv"  # its image column named as a questions file's: passed, asked free-form
    headed_image.write_text("image,question,A,B,C,D,answer\nx.png,Which?,a,b,c,d,B\n")
    for path, config in ((original, "multiple_choice"), (mmbench, "mmbench"), (quoted, "multiple_choice"), (mac, "multiple_choice"),
                         (semicolons, "multiple_choice"), (headed_image, "multiple_choice")):
        with pytest.raises(ConfigError, match=rf"holds multiple-choice questions .*use --config configs/predict/{config}\.yaml "
                                              rf"--data\.csv_file .*{path.name}"):
            QuestionsPredictDataModule(questions_file=str(path), output=str(tmp_path / "a.jsonl")).check_inputs()
    # CircularEval on several processes is no longer refused: their shares are judged together (tests/test_ddp.py)
    assert choice_data(backbones, no_image, tmp_path / "o.csv", format="mmbench", circular=True).check_output(
        world_size=2, rank=1) == tmp_path / "o.rank1.csv"


def test_the_benchmark_configs_parse_and_name_their_format(backbones, tmp_path, capsys):
    from .test_cli import print_config

    for name, fmt in (("mmbench", "mmbench"), ("scienceqa", "scienceqa")):
        config = yaml.safe_load((REPO / "configs" / "predict" / f"{name}.yaml").read_text())["data"]
        assert config["class_path"] == "mmcaption.data.MultipleChoiceDataModule"
        dm = MultipleChoiceDataModule(**{**config["init_args"], "csv_file": str(tmp_path / "x"), "output": str(tmp_path / "o.csv"),
                                         "tokenizer": str(backbones[0]), "image_processor": str(backbones[1])})
        assert dm.format == fmt and dm.category_columns == ({"per_category": "category", "per_l2_category": "l2-category"}
                                                            if fmt == "mmbench" else {"per_subject": "subject", "per_grades": "grades", "per_grade": "grade",
                                                                                      "per_context": "context"})
    out = print_config(capsys, "predict", "--config", str(REPO / "configs" / "demo" / "caption.yaml"), "--config",
                       str(REPO / "configs" / "predict" / "mmbench.yaml"), "--data.split", "null")
    assert "format: mmbench" in out and "circular: true" in out and "split: null" in out


def test_resuming_on_an_edited_questions_file_is_refused_by_its_hash():
    # the summary records each input's sha256; resume compared only the weights and settings, so answers to two
    # versions of a benchmark file made one accuracy
    then = {"inputs": [{"path": "/data/MMBench_DEV_EN.tsv", "sha256": "aa"}]}
    assert record_differences(then, {"inputs": [{"path": "/elsewhere/MMBench_DEV_EN.tsv", "sha256": "aa"}]}) == []  # moved
    assert record_differences(then, {"inputs": [{"path": "/data/MMBench_DEV_EN.tsv", "sha256": "bb"}]}) == [
        "the input files (/data/MMBench_DEV_EN.tsv then; /data/MMBench_DEV_EN.tsv now, edited or other)"]
    assert record_differences({}, {"inputs": [{"path": "/data/x.tsv", "sha256": "bb"}]}) == []  # an output of an earlier release


def test_a_sampled_outputs_record_holds_the_seed_that_sampled_it(monkeypatch, capsys):
    # sampled captions of seeds 5 and 6 differ, and the summary did not say which seed made them: a resume with another
    # seed put two runs' samples together as one output
    from mmcaption.evaluation.report import generation_record

    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    sampled = generation_record({"do_sample": True, "temperature": 1.5, "max_new_tokens": 8})
    assert sampled == {"do_sample": True, "temperature": 1.5, "max_new_tokens": 8, "seed": 5}
    assert "seed" not in generation_record({"do_sample": False, "num_beams": 3})  # greedy and beams: no seed changes them
    monkeypatch.setenv("PL_GLOBAL_SEED", "6")
    assert record_differences({"generation": sampled}, {"generation": generation_record(dict(sampled))}) == ["seed (5 then, 6 now)"]
    # the same seed: gone on from, and said that the rows after the first ones are other draws than one run's (the README
    # said a resume gives the uninterrupted run's rows, which holds for greedy and beams only)
    from mmcaption.data.resume import check_made_alike

    check_made_alike(Path("captions.jsonl"), {"generation": sampled}, {"generation": sampled})
    assert ("note: resume: the rows after captions.jsonl's are sampled anew from seed 5, not as the uninterrupted run would "
            "have drawn them") in capsys.readouterr().err
    check_made_alike(Path("captions.jsonl"), {"generation": {"num_beams": 3}}, {"generation": {"num_beams": 3}})
    assert "sampled anew" not in capsys.readouterr().err
