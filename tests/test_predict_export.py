import csv
import io
import json
import os
import random
import shutil
import unicodedata
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from peft import PeftModel
from PIL import Image

from mmcaption import Captioner
from mmcaption.data import CaptionPredictDataModule, DataError, MultipleChoiceDataModule
from mmcaption.demo.synthetic import Scene, draw_scene
from mmcaption.errors import ConfigError, NotAModelFolderError
from mmcaption.evaluation.answers import pope_answer
from mmcaption.evaluation.report import read_output_rows, scores_said
from mmcaption.export import main as export_main
from mmcaption.images import IMAGE_SUFFIXES
from mmcaption.model.backbones import load_language_model
from mmcaption.module import MultimodalCaptioner
from mmcaption.prompts import caption_prompt_ids


def predictor(tmp_path) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


def caption_data(backbones, images, output) -> CaptionPredictDataModule:
    return CaptionPredictDataModule(images=str(images), output=str(output), tokenizer=str(backbones[0]),
                                    image_processor=str(backbones[1]), batch_size=2, num_workers=0)


def test_a_batch_size_below_one_is_refused_by_name(backbones, image_folder, tmp_path):
    with pytest.raises(ConfigError, match="data.batch_size must be at least 1, got 0"):  # was a DataLoader error at the
        CaptionPredictDataModule(images=str(image_folder), output=str(tmp_path / "c.jsonl"), batch_size=0)  # first batch


def test_more_processes_than_rows_to_predict_is_refused_with_the_devices_that_fit(backbones, image_folder, tmp_path):
    from types import SimpleNamespace

    dm = caption_data(backbones, image_folder / "img0.png", tmp_path / "c.jsonl")
    dm.setup("predict")
    dm.trainer = SimpleNamespace(world_size=2)  # was Lightning's AssertionError on one process, a hang-up on the other
    with pytest.raises(ConfigError, match=r"1 row\(s\) to predict for 2 processes.*--trainer.devices 1"):
        dm.predict_dataloader()
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)
    assert len(dm.predict_dataloader().dataset) == 1


def test_captions_for_a_folder_with_one_bad_image_keep_every_other_prediction(backbones, trained_checkpoint, image_folder, tmp_path):
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    output = tmp_path / "out" / "captions.jsonl"
    predictor(tmp_path).predict(module, datamodule=caption_data(backbones, image_folder, output))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["broken.jpg", "img0.png", "img1.png", "img2.png"]
    assert "cannot be decoded" in rows[0]["error"] and "caption" not in rows[0]
    assert all(r["error"] is None and isinstance(r["caption"], str) for r in rows[1:])
    summary = json.loads(output.with_name("captions.jsonl.summary.json").read_text())
    assert summary["rows"] == 4 and summary["errors"] == 1
    # no answer key, nothing scored: it said "answered": 0 for captions that were all written
    assert not {"answered", "correct", "unanswered", "accuracy"} & set(summary)


def test_captions_the_model_ended_at_once_are_counted_and_said(backbones, trained_checkpoint, image_folder, tmp_path, monkeypatch):
    # an instruct checkpoint asked for captions (or a model trained a few steps) wrote "" for every photo, said by nothing
    from mmcaption.tasks import Tasks

    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")  # (its error row is no empty caption)
    monkeypatch.setattr(Tasks, "generate_batch", lambda self, batch, *args: [""] * len(batch["input_ids"]))
    output = tmp_path / "captions.jsonl"
    predictor(tmp_path).predict(MultimodalCaptioner.load_from_checkpoint(trained_checkpoint),
                                datamodule=caption_data(backbones, image_folder, output))
    summary = json.loads(output.with_name("captions.jsonl.summary.json").read_text())
    assert summary["empty"] == 3 and summary["errors"] == 1
    assert "; 3 generated texts are empty: the model ended them at once" in scores_said(summary, [])


def test_photos_named_in_any_encoding_are_written_with_the_columns_captions_have(backbones, trained_checkpoint, tmp_path):
    # a Windows archive unzipped on Linux leaves "caf\xe9.jpg" (Latin-1 bytes): the CSV crashed on it
    # (UnicodeEncodeError) after its summary counted the row; the CSV carried six empty columns of other tasks,
    # and JSON Lines wrote "café" as "caf\u00e9", which grep does not find
    folder = tmp_path / "photos"
    folder.mkdir()
    picture = Image.new("RGB", (32, 32), (200, 30, 30))
    picture.save(folder / os.fsdecode(b"caf\xe9.png"))
    picture.save(folder / "café.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")  # the first row: an error, no caption
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    for name in ("captions.csv", "captions.jsonl"):
        predictor(tmp_path).predict(module, datamodule=caption_data(backbones, folder, tmp_path / name))
    table = (tmp_path / "captions.csv").read_bytes()
    assert table.splitlines()[0] == b"\xef\xbb\xbfimage,caption,error"  # names beyond ASCII: Excel's byte-order mark
    assert b"caf\xe9.png" in table and "café.png".encode() in table  # each name as the disk holds it
    lines = (tmp_path / "captions.jsonl").read_text(encoding="utf-8")
    assert "café.png" in lines and "\\udce9" in lines  # the other escaped, as JSON can hold it
    for name in ("captions.csv", "captions.jsonl"):
        rows = read_output_rows(tmp_path / name)
        assert sorted(Path(r["image"]).name for r in rows) == sorted(["broken.jpg", "café.png", os.fsdecode(b"caf\xe9.png")])
        assert json.loads((tmp_path / f"{name}.summary.json").read_text())["rows"] == 3


def test_image_list_with_a_missing_file_and_an_empty_folder(backbones, trained_checkpoint, image_folder, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image_folder / 'img0.png'}\nimages/nope.png\n")
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    output = tmp_path / "captions.jsonl"
    predictor(tmp_path).predict(module, datamodule=caption_data(backbones, listing, output))
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows[1]["error"].startswith("image not found") and "nope.png" in rows[1]["error"]
    assert rows[0]["caption"] is not None

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no images .* found in folder .*empty"):
        caption_data(backbones, empty, output).setup("predict")


def test_captions_of_a_list_name_each_image_as_its_line_is_written(backbones, trained_checkpoint, tmp_path):
    # a CMS's export of its media, the list beside it: the captions are joined back onto the list's lines (pandas'
    # merge on the column); they came back as the files found, "export/media/UPPER.JPG" for "media/upper.jpg"
    export = tmp_path / "export"
    (export / "media").mkdir(parents=True)
    found = {"media/upper.jpg": "media/UPPER.JPG", "./a.jpg": "a.jpg",
             unicodedata.normalize("NFC", "media/café.png"): unicodedata.normalize("NFD", "media/café.png")}
    for number, name in enumerate(found.values()):
        draw_scene(Scene("red", "circle", "left"), 32, random.Random(number)).save(export / name, format="PNG")
    listing = export / "list.txt"
    listing.write_text("".join(f"{line}\n" for line in found), encoding="utf-8")
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    for output in (tmp_path / "captions.jsonl", tmp_path / "captions.csv"):
        predictor(tmp_path).predict(module, datamodule=caption_data(backbones, listing, output))
        rows = read_output_rows(output)
        assert [row["image"] for row in rows] == list(found)
        assert all(row.get("caption") is not None and not row.get("error") for row in rows)
    # an output an earlier release began (its rows named by the file found) and was stopped in: gone on from, not
    # refused as "the output of another input"
    output = tmp_path / "captions.jsonl"
    first = {**read_output_rows(output)[0], "image": str(export / "media" / "UPPER.JPG")}
    output.write_text(json.dumps(first) + "\n")
    output.with_name("captions.jsonl.summary.json").write_text(json.dumps({"rows": 1, "interrupted": "SIGINT"}))
    datamodule = caption_data(backbones, listing, output)
    datamodule.resume = True
    predictor(tmp_path).predict(module, datamodule=datamodule)
    assert [row["image"] for row in read_output_rows(output)] == [first["image"], *list(found)[1:]]


def test_the_files_a_folders_captions_leave_out_are_in_the_summary(backbones, trained_checkpoint, tmp_path):
    # a night's batch job read from its summary: the folder's PDFs and notes left out were said only on the console
    folder = tmp_path / "media"
    folder.mkdir()
    draw_scene(Scene("red", "circle", "left"), 32, random.Random(0)).save(folder / "a.png")
    (folder / "brochure.pdf").write_bytes(b"%PDF-1.4")
    (folder / "notes.txt").write_text("to caption")
    output = tmp_path / "captions.jsonl"
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    predictor(tmp_path).predict(module, datamodule=caption_data(backbones, folder, output))
    summary = json.loads(output.with_name("captions.jsonl.summary.json").read_text())
    assert summary["rows"] == 1 and [note.split(": ", 1)[1] for note in summary["input_notes"]] == [
        "2 files left out, not images by their names (1 x .pdf, 1 x .txt); images are " + ", ".join(sorted(IMAGE_SUFFIXES))]


def write_csv(path: Path, rows: list[dict], columns=("img_path", "Question", "A", "B", "C", "D", "answer")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def choice_data(backbones, csv_path, output, method="likelihood", **settings) -> MultipleChoiceDataModule:
    return MultipleChoiceDataModule(csv_file=str(csv_path), output=str(output), method=method, tokenizer=str(backbones[0]),
                                    image_processor=str(backbones[1]), batch_size=2, num_workers=0, **settings)


QUESTIONS = [
    {"img_path": "images/img0.png", "Question": "What colour is it?", "A": "red", "B": "blue", "C": "green", "D": "yellow", "answer": "B"},
    {"img_path": "images/img1.png", "Question": "What colour are they?", "A": "yellow", "B": "green", "C": "red", "D": "blue", "answer": "D"},
    {"img_path": "images/img2.png", "Question": "What colour?", "A": "blue", "B": "red", "C": "yellow", "D": "green", "answer": "A"},
    {"img_path": "images/missing.png", "Question": "What colour?", "A": "blue", "B": "red", "C": "yellow", "D": "green", "answer": "A"},
]


def test_likelihood_scoring_picks_the_option_the_model_is_rigged_to_prefer(backbones, trained_checkpoint, image_folder, tmp_path):
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    planted = module.tokenizer(" blue", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        module.model.language_model.get_base_model().lm_head.bias[planted] += 30.0
    output = tmp_path / "answers.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, write_csv(tmp_path / "q.csv", QUESTIONS), output))
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["prediction"] for r in rows[:3]] == ["B", "D", "A"]
    assert rows[3]["prediction"] == "" and "image not found" in rows[3]["error"]
    summary = json.loads(output.with_name("answers.csv.summary.json").read_text())
    # the row whose image is missing got no answer: it counts as wrong, and is reported as such
    assert summary["correct"] == 3 and summary["answered"] == 4 and summary["accuracy"] == 0.75
    assert summary["unanswered"] == 1 and summary["errors"] == 1 and rows[3]["correct"] == "False"


def test_a_sheet_pandas_wrote_comes_back_with_its_index_column_and_its_cells_as_written(backbones, trained_checkpoint,
                                                                                          image_folder, tmp_path):
    # df.to_csv("q.csv") writes the row ids under an empty header: the output left that column out without a word (the
    # key the user joins back on), and gave back every cell stripped of its spaces
    import pandas as pd

    sheet = pd.DataFrame([{**q, "Question": f"  {q['Question']}  ", "A": f" {q['A']} "} for q in QUESTIONS[:3]], index=[17, 4, 9])
    sheet["answer"] = ["(B)", "D", "a"]
    sheet.to_csv(tmp_path / "q.csv")
    output = tmp_path / "answers.csv"
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, tmp_path / "q.csv", output))
    back = pd.read_csv(output, index_col=0, keep_default_na=False)
    assert list(back.index) == [17, 4, 9] and list(back.columns[:7]) == list(sheet.columns)
    assert list(back["Question"]) == list(sheet["Question"]) and list(back["A"]) == list(sheet["A"])
    assert list(back["answer"]) == ["B", "D", "A"]  # the letter each names, as documented
    # the questions files the same
    from mmcaption.data.questions import read_question_file

    pd.DataFrame([{"image": "images/img0.png", "question": "What colour?"}], index=[41]).to_csv(tmp_path / "open.csv")
    asked, _ = read_question_file(tmp_path / "open.csv")
    assert asked[0].record == {"": "41", "image": "images/img0.png", "question": "What colour?"}
    # a value under a later column without a name is still left out, and said
    (tmp_path / "trailing.csv").write_text("img_path,Question,A,B,\nimages/img0.png,What colour?,red,blue,see me\n")
    with pytest.warns(UserWarning, match=r"trailing\.csv: column\(s\) 5 have no name in the header and are left out of "
                                         r"the output \(the first value on line 2\)"):
        from mmcaption.data.choice_csv import read_choice_csv

        assert "" not in read_choice_csv(tmp_path / "trailing.csv")[0].record


def test_generation_method_answers_with_a_letter_or_says_it_could_not(backbones, trained_checkpoint, image_folder, tmp_path):
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    output = tmp_path / "answers.csv"
    predictor(tmp_path).predict(module, datamodule=choice_data(backbones, write_csv(tmp_path / "q.csv", QUESTIONS), output, "generation"))
    with output.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(r["prediction"] in ("", "A", "B", "C", "D") for r in rows)
    assert all(r["generated"] or r["error"] for r in rows)
    # an answer that names no option was predicted, and is wrong: not among the rows that could not be (it said
    # "6 could not be predicted" of answers all generated)
    summary = json.loads(output.with_name("answers.csv.summary.json").read_text())
    assert summary["errors"] == 1  # the missing image
    assert summary["no_option"] == sum(r["error"].startswith("no single option letter") for r in rows) == 3  # '' here
    assert summary["unanswered"] == 1 + summary["no_option"]


def test_bad_csv_is_refused_with_the_file_and_line(backbones, tmp_path):
    no_question = write_csv(tmp_path / "a.csv", QUESTIONS, columns=("img_path", "A", "B", "C"))
    with pytest.raises(DataError, match=r"a\.csv lacks column\(s\) \['Question'\]"):
        choice_data(backbones, no_question, tmp_path / "o.csv").setup("predict")
    bad_answer = write_csv(tmp_path / "b.csv", [QUESTIONS[0], {**QUESTIONS[1], "answer": "E"}])
    with pytest.raises(DataError, match=r"b\.csv, line 3: answer 'E' is neither one of A, B, C, D nor an option's text"):
        choice_data(backbones, bad_answer, tmp_path / "o.csv").setup("predict")


def test_a_caption_cut_at_max_new_tokens_is_marked_and_counted_and_a_finished_one_is_not(backbones, trained_checkpoint,
                                                                                          image_folder, tmp_path):
    # "a picture of a" at max_new_tokens 4 read as a finished caption: no field, no count, no note
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    module.tasks.generation.max_new_tokens = 4
    lm_head = module.model.language_model.get_base_model().lm_head
    for planted, cut in ((" blue", True), (module.tokenizer.eos_token, False)):  # never ends / ends at once
        token = module.tokenizer(planted, add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            lm_head.bias.zero_()
            lm_head.bias[token] += 30.0
        output = tmp_path / f"{cut}.jsonl"
        predictor(tmp_path).predict(module, datamodule=caption_data(backbones, image_folder, output))
        rows = [json.loads(line) for line in output.read_text().splitlines()]
        summary = json.loads(output.with_name(output.name + ".summary.json").read_text())
        if cut:
            assert all(row["cut_at_max_new_tokens"] is True and row["caption"].startswith("blue") for row in rows), rows
            assert summary["cut_at_max_new_tokens"] == len(rows) > 0
            # the closing line's words (read from the summary as predict says them; its log line may go to another handler)
            assert f"{len(rows)} stopped at max_new_tokens before their end" in scores_said(summary, [])
        else:
            assert not any("cut_at_max_new_tokens" in row for row in rows) and "cut_at_max_new_tokens" not in summary


def test_texts_cut_at_max_new_tokens_are_warned_of_once_a_fit_and_again_for_another_stage(monkeypatch):
    # said once a process, the pipeline's second stage (its answers cut) was never warned of
    from transformers import GenerationConfig

    from mmcaption.results import said_cut

    monkeypatch.setattr("mmcaption.results._SAID_CUT", [])
    with pytest.warns(UserWarning, match="5 of 40 generated texts stopped at max_new_tokens 20"):
        said_cut(5, 40, GenerationConfig(max_new_tokens=20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        said_cut(7, 40, GenerationConfig(max_new_tokens=20))  # the same fit's next validation: said already
        said_cut(0, 100, GenerationConfig(max_new_tokens=24))  # nothing cut: nothing said
    with pytest.warns(UserWarning, match="30 of 100 generated texts stopped at max_new_tokens 24"):
        said_cut(30, 100, GenerationConfig(max_new_tokens=24))


def test_export_load_predict_gives_the_checkpoint_captions(backbones, trained_checkpoint, image_folder, tmp_path):
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint).eval()
    out = module.model.save_pretrained(tmp_path / "export", module.tokenizer, {"caption_prompt": "", "system_prompt": ""},
                                       module.generation, {"checkpoint": str(trained_checkpoint)})
    assert {p.name for p in out.iterdir()} >= {"adapter", "multimodal.safetensors", "mmcaption.json", "README.md", "tokenizer", "image_processor"}

    images = sorted(image_folder.glob("*.png"))
    captioner = Captioner.from_pretrained(out)
    dm = caption_data(backbones, image_folder, tmp_path / "c.jsonl")
    dm.setup("predict")
    batch = dm.predict_dataloader().collate_fn([dm.dataset[i] for i in range(3)])
    assert captioner.caption([str(p) for p in images]) == module.tasks.generate_batch(batch)

    # the adapter is a plain PEFT folder: it loads onto the plain 4-bit language model
    base = load_language_model(str(backbones[0]))
    peft = PeftModel.from_pretrained(base, out / "adapter")
    ours = {n: p for n, p in module.model.named_parameters() if "lora_" in n}
    theirs = {n.replace(".decoder_layer", ""): p for n, p in ours.items()}
    loaded = dict(peft.named_parameters())
    for name, param in theirs.items():
        assert torch.equal(loaded[name.removeprefix("language_model.")], param), name


def test_export_command_with_merge_and_init_from_an_export(backbones, trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "merged"
    capsys.readouterr()
    export_main([str(trained_checkpoint), str(out), "--merge"])
    # said as it is asked for, not only in the card (the merged model's outputs differ from the trained one's)
    assert "note: the LoRA weights, trained against nf4 weights, are merged into the unquantized ones" in capsys.readouterr().err
    manifest = json.loads((out / "mmcaption.json").read_text())
    assert manifest["merged"] and (out / "language_model" / "config.json").is_file()
    assert manifest["source"]["global_step"] == 4
    card = (out / "README.md").read_text()  # the card says the merge left the quantization the adapter learnt on
    assert "original bfloat16 weights although it was trained against their nf4 quantization" in card
    captioner = Captioner.from_pretrained(out)
    assert isinstance(captioner.caption(draw_scene(Scene("red", "circle", "left"), 64, random.Random(0))), str)
    # computed with the merged weights as they are, as the card says (they were quantized to nf4 again, the trained
    # change drowned in the rounding); quantized on request
    assert captioner.model.config.quantization == "none"
    assert Captioner.from_pretrained(out, quantization="nf4").model.config.quantization == "nf4"

    plain = tmp_path / "plain"
    export_main([str(trained_checkpoint), str(plain)])
    source = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    for folder in (plain, out):  # a model built on the base language model takes the LoRA from either export
        module = MultimodalCaptioner(**{**source.hparams, "init_from": str(folder)})  # the config comes back as a dict
        module.initialise_from_checkpoint()
        for key in source.trainable_state_keys():
            assert torch.equal(module.state_dict()[key], source.state_dict()[key]), (folder.name, key)
    # the merged folder's own model (its unquantized language model, as predict --model.init_from builds it): nothing to
    # say (it was told to load it in nf4, and that its weights were fitted to other weights, "likely nonsense")
    from mmcaption.checkpoint import load_initial_weights
    from mmcaption.model import MultimodalCausalLM
    from mmcaption.model.multimodal import pretrained_config

    own = MultimodalCausalLM.from_config(pretrained_config(out))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        load_initial_weights(own, out)
    requantized = MultimodalCausalLM.from_config(pretrained_config(out, quantization="nf4"))  # asked for: said what it costs
    with pytest.warns(UserWarning, match="merged into its unquantized language model, which this run loads in nf4: the rounding"):
        load_initial_weights(requantized, out)


def test_a_merge_into_other_base_weights_than_trained_on_is_said_and_recorded(backbones, trained_checkpoint, tmp_path, capsys):
    # the base language model written again since training (another pretraining under the same folder name): --merge
    # folded the LoRA into those weights and the export said nothing, its card and manifest no different from a true one
    from transformers import AutoModelForCausalLM

    other = tmp_path / "language_model"
    shutil.copytree(backbones[0], other)
    base = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    base.save_pretrained(other)
    capsys.readouterr()
    out = tmp_path / "merged"
    with pytest.warns(UserWarning, match="was fitted to other weights"):  # said as the checkpoint loads, as before
        export_main([str(trained_checkpoint), str(out), "--merge", "--language_model", str(other)])
    err = capsys.readouterr().err
    assert (f"warning: the LoRA was merged into {other} as it is now, whose weights are not those {trained_checkpoint} was "
            f"trained against (their fingerprints differ): {out / 'language_model'} is not the trained model") in err
    manifest = json.loads((out / "mmcaption.json").read_text())
    assert manifest["merged_base_weights"] != manifest["backbone_weights"]["language_model"]
    assert "are not those it was trained against" in (out / "README.md").read_text()
    # merged into the weights it was trained against: nothing said, the fingerprints the same
    same = tmp_path / "same"
    export_main([str(trained_checkpoint), str(same), "--merge"])
    manifest = json.loads((same / "mmcaption.json").read_text())
    assert manifest["merged_base_weights"] == manifest["backbone_weights"]["language_model"]
    assert "not the trained model" not in capsys.readouterr().err + (same / "README.md").read_text()


def test_csv_as_excel_writes_it_bom_crlf_any_case_and_five_options(backbones, tmp_path):
    text = "IMG_PATH,question,a,b,c,d,e,Answer,,\r\nimages/img0.png,\"Which one, then?\",red,blue,green,yellow,white,e,,\r\n" \
           "images/img1.png,Which?,red,blue,,,,B,,\r\n"  # two trailing cells without a header, as spreadsheets leave
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # Excel's "CSV UTF-8": a byte-order mark
    (tmp_path / "images").mkdir()
    for name in ("img0.png", "img1.png"):
        Image.new("RGB", (32, 32)).save(tmp_path / "images" / name)
    dm = choice_data(backbones, path, tmp_path / "o.csv")
    questions = dm.read_rows()
    assert [q.options for q in questions] == [["red", "blue", "green", "yellow", "white"], ["red", "blue"]]
    assert [q.answer for q in questions] == ["E", "B"] and questions[0].question == "Which one, then?"
    assert [q.line for q in questions] == [2, 3] and "" not in questions[0].record
    dm.setup("predict")  # both become prompts: five options, and two
    assert len(dm.dataset[0]["option_ids"]) == 5 and len(dm.dataset[1]["option_ids"]) == 2
    # tokenized in one call for all the questions (a call per option: 22 s of 50,000 questions), as one by one
    from mmcaption.prompts import ConversationTemplate, text_ids

    template, tokenizer = ConversationTemplate(system=dm.system_prompt), dm.tokenizer
    for row, question in zip(dm.dataset, questions):
        assert row["option_ids"] == [text_ids(tokenizer, " " + o) + [tokenizer.eos_token_id] for o in question.options]
        assert list(row["input_ids"]) == template.prompt(question.question, tokenizer)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("img_path,Question,A,B,C,D\nx.png,Is it red, or blue?,red,blue,green,yellow\n",
         r"line 2: 7 fields where the header has 6 \(a comma inside a field must be quoted\)"),
        ('img_path,Question,A,B,C,D\nx.png,"A question\nover two lines",red,blue,green,yellow\ny.png,Q,red,blue,green\n',
         r"line 4: 5 fields where the header has 6"),  # physical lines: the quoted field spans 2 and 3
        ("img_path,Question,A,B,a\nx.png,Q,red,blue,green\n", r"column\(s\) \['A', 'a'\] appear more than once"),
        ("img_path,Question,A,B,C\nx.png,Q,red,,green\n", r"line 2: options must be 2 or more, without gaps"),
        ("img_path,Question,A,B,answer\nx.png,Q,red,blue,C\n", r"line 2: answer 'C' is neither one of A, B nor an option's text"),
        # column D was read as option C: its answer D refused, an answer C scored against D's text
        ("img_path,Question,A,B,D,answer\nx.png,Q,red,blue,green,C\n",
         r"q.csv: it has option column\(s\) \['A', 'B', 'D'\] but not \['C'\]: options are lettered in order"),
    ],
    ids=["unquoted comma", "physical line after a multi-line field", "duplicate header", "gap in options", "answer names no option",
         "option column left out"],
)
def test_csv_rows_that_would_be_read_wrong_are_refused_with_their_physical_line(backbones, tmp_path, content, message):
    path = tmp_path / "q.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        choice_data(backbones, path, tmp_path / "o.csv").read_rows()


def test_captioner_with_five_options_and_no_images(backbones, trained_checkpoint, tmp_path):
    with pytest.raises(NotAModelFolderError, match=f"a checkpoint of mmcaption fit becomes one with: mmcaption-export {trained_checkpoint} <new folder>"):
        Captioner.from_pretrained(trained_checkpoint)
    export_main([str(trained_checkpoint), str(tmp_path / "export")])
    captioner = Captioner.from_pretrained(tmp_path / "export")
    image = draw_scene(Scene("red", "circle", "left"), 64, random.Random(0))
    assert captioner.choose(image, "Which shape?", ["circle", "square", "triangle", "diamond", "star"]) in "ABCDE"
    assert captioner.caption([]) == []
    assert isinstance(captioner.answer(None, "Which shape is red?"), str)  # a text-only question
    assert captioner.choose(None, "Which shape?", ["circle", "square"]) in "AB"
    with pytest.warns(UserWarning, match=r"options A, C are the same text \('circle'\): no model can tell them apart"):
        captioner.choose(image, "Which shape?", ["circle", "square", "circle"])  # was 'A', quietly, whichever was meant
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # said at the caller's line, each time: a line inside the
        warnings.simplefilter("default")                   # package was named, and Python said it once for all calls
        for question in ("Which shape?", "Which one?"):
            captioner.choose(image, question, ["circle", "circle"])
    said = [w for w in caught if "same text" in str(w.message)]
    assert len(said) == 2 and all(w.filename == __file__ for w in said)
    # None for a setting, as a service passes an optional field on: the model's own (was transformers' max_length 20)
    assert captioner.caption(image, max_new_tokens=None) == captioner.caption(image)
    with pytest.raises(ValueError, match="caption needs an image for each item"):  # was a caption made up from no image
        captioner.caption([image, None])
    with pytest.raises(ConfigError, match="a multiple-choice question needs 2 to 8 options"):  # a caller's mistake: was a bare
        captioner.choose(image, "Which?", ["circle"])                                          # ValueError
    with pytest.raises(ConfigError, match=r"question 2 of 2 needs 2 to 8 options \(A, B, C, D, E, F, G, H\), got 1"):
        captioner.choose([image, image], ["Which?", "Which?"], [["circle", "square"], ["circle"]])  # which one, in a batch
    with pytest.raises(ValueError, match="generation: num_beams 0 must be 1 or more"):  # a call's own settings too
        captioner.caption(image, num_beams=0)
    with pytest.raises(ValueError, match="options is a list of the options' texts .*, not 'circle'"):  # was about lists of questions
        captioner.choose(image, "Which?", "circle")
    with pytest.raises(ValueError, match=r"history is a list of \(question, answer\) pairs of strings"):  # was an unpacking error
        captioner.chat(image, "And its colour?", ["It is a circle."])
    # empty text would leave the model to make up the question (it answered a question of its own) or an option
    with pytest.raises(ValueError, match="question 0 is '  ': each question is a non-empty string"):
        captioner.answer(image, "  ")
    with pytest.raises(ValueError, match="question 1 is None"):
        captioner.answer([image, image], ["Which shape?", None])
    with pytest.raises(ValueError, match="option 1 is '': each option is a non-empty string"):
        captioner.choose(image, "Which shape?", ["circle", ""])
    assert captioner.caption((image, image)) == captioner.caption([image, image])  # a tuple is a batch, as a list is


def test_export_writes_the_checkpoints_tensors_without_reading_the_backbones_weights(backbones, trained_checkpoint, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    from mmcaption.export import export_checkpoint

    # what the full model (4-bit language model, vision tower, trained tensors) writes
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    full = module.model.save_pretrained(tmp_path / "full", module.tokenizer)

    def refuse(*args, **kwargs):
        raise AssertionError("the export read a backbone's weights")

    with monkeypatch.context() as patch:
        patch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
        patch.setattr(CLIPVisionModel, "from_pretrained", refuse)
        lean = export_checkpoint(trained_checkpoint, tmp_path / "lean")

    for name in ("adapter/adapter_model.safetensors", "multimodal.safetensors"):
        expected, written = load_file(full / name), load_file(lean / name)
        assert expected.keys() == written.keys(), name
        assert all(torch.equal(expected[k], written[k]) for k in expected), name
    assert json.loads((lean / "adapter" / "adapter_config.json").read_text()) == json.loads((full / "adapter" / "adapter_config.json").read_text())
    # PEFT writes its target modules from a set, in an order that changed from one process to the next: sorted, two
    # exports of one checkpoint are byte for byte alike
    targets = json.loads((lean / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(targets) and len(targets) == 4
    assert json.loads((lean / "mmcaption.json").read_text())["model"] == json.loads((full / "mmcaption.json").read_text())["model"]
    image = draw_scene(Scene("red", "circle", "left"), 64, random.Random(0))
    assert Captioner.from_pretrained(lean).caption(image) == Captioner.from_pretrained(full).caption(image)


def test_captioner_answers_and_chooses_in_batches_like_one_by_one_and_chats_in_the_template_layout(trained_checkpoint, tmp_path):
    import numpy as np
    from transformers import AutoTokenizer

    out = tmp_path / "export"
    export_main([str(trained_checkpoint), str(out)])
    captioner = Captioner.from_pretrained(out)
    rng = random.Random(0)
    scenes = [Scene("red", "circle", "left"), Scene("blue", "square", "right"), Scene("green", "triangle", "top")]
    images = [draw_scene(scene, 64, rng) for scene in scenes] + [None]  # the last question is text-only
    questions = ["What colour is the shape?", "Which shape is it?", "Where is the shape?", "What is red?"]
    options = [["red", "blue", "green"], ["circle", "square"], ["left", "right", "top", "bottom"], ["the sun", "grass"]]

    one_by_one = [captioner.answer(image, question, max_new_tokens=6, min_new_tokens=6) for image, question in zip(images, questions)]
    assert len(set(one_by_one)) > 1, one_by_one  # the questions get different answers: the comparison means something
    assert captioner.answer(images, questions, max_new_tokens=6, min_new_tokens=6) == one_by_one
    letters = [captioner.choose(image, question, opts) for image, question, opts in zip(images, questions, options)]
    assert captioner.choose(images, questions, options) == letters
    scores = captioner.option_scores(images, questions, options)  # what the letters were picked by
    assert [len(row) for row in scores] == [3, 2, 4, 2]
    assert ["ABCD"[row.index(max(row))] for row in scores] == letters
    assert captioner.option_scores(images[0], questions[0], options[0]) == pytest.approx(scores[0], abs=1e-4)  # batch padding: float noise
    with pytest.raises(ValueError, match="as many images"):
        captioner.answer(images[:2], questions)

    # an image as an array is the same image
    array = np.asarray(images[0])
    assert captioner.answer(array, questions[0], max_new_tokens=6, min_new_tokens=6) == one_by_one[0]

    # chat: the history reaches the prompt in the training layout, as the exported chat template renders it
    history = [(questions[0], "It is red."), ("And its shape?", "A circle.")]
    prompt = captioner.template.chat_prompt(history, "Where is it?", captioner.tokenizer)
    messages = [m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    exported = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert prompt == exported.apply_chat_template([*messages, {"role": "user", "content": "Where is it?"}],
                                                  tokenize=True, return_dict=False)
    assert captioner.chat(images[0], questions[0], max_new_tokens=6, min_new_tokens=6) == one_by_one[0]  # no history: a plain answer
    assert isinstance(captioner.chat(images[0], "Where is it?", history, max_new_tokens=6, min_new_tokens=6), str)


def test_pope_with_its_coco_2014_names_reads_coco_2017s_copies_of_the_photos(backbones, tmp_path):
    # POPE's files name val2014's photos (COCO_val2014_000000310196.jpg); with COCO 2017's download, which holds the
    # same photos by id in val2017/ and train2017/, every question was refused: "none of the 3 images ... was found"
    from mmcaption.data import QuestionsPredictDataModule

    coco = tmp_path / "coco"
    for folder, image_id in (("val2017", 42), ("train2017", 7)):  # val2014's photos went to both of 2017's folders
        (coco / folder).mkdir(parents=True)
        Image.new("RGB", (32, 32), "red").save(coco / folder / f"{image_id:012d}.jpg")
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text("".join(json.dumps({"question_id": i, "image": image, "text": "Is there a circle in the image?",
                                        "label": "yes"}) + "\n" for i, image in enumerate(
        ["COCO_val2014_000000000042.jpg", "COCO_val2014_000000000007.jpg", "COCO_val2014_000000000099.jpg"])))
    for root in (coco / "val2017", coco):  # the folder a user gives: the val2017/ beside the file's list, or above both
        data = QuestionsPredictDataModule(questions_file=str(pope), image_root=str(root), tokenizer=str(backbones[0]),
                                          image_processor=str(backbones[1]))
        data.setup("predict")
        assert data.dataset.image_paths[:2] == [coco / "val2017" / "000000000042.jpg", coco / "train2017" / "000000000007.jpg"]
        assert data.dataset[0]["error"] is None and data.dataset[1]["error"] is None
        assert "COCO_val2014_000000000099.jpg" in data.dataset[2]["error"]  # one missing: its own row says so, by its name
    with pytest.raises(DataError, match=r"none of the 3 images of .*coco_pope_random\.json was found"):  # other photos
        QuestionsPredictDataModule(questions_file=str(pope), image_root=str(tmp_path), tokenizer=str(backbones[0]),
                                   image_processor=str(backbones[1])).setup("predict")


def test_free_form_questions_from_jsonl_or_a_spreadsheet_csv_are_answered_and_scored_by_exact_match(backbones, trained_checkpoint, image_folder, tmp_path):
    from mmcaption.data import QuestionsPredictDataModule

    def run(path, output):
        module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
        module.generation.update(min_new_tokens=3, max_new_tokens=5)  # words, not an immediate end-of-text
        data = QuestionsPredictDataModule(questions_file=str(path), output=str(output), tokenizer=str(backbones[0]),
                                          image_processor=str(backbones[1]), batch_size=2, num_workers=0)
        predictor(tmp_path).predict(module, datamodule=data)
        if output.suffix == ".csv":
            return list(csv.DictReader(output.open(newline="", encoding="utf-8")))
        return [json.loads(line) for line in output.read_text().splitlines()]

    asked = tmp_path / "asked.jsonl"
    asked.write_text("\n".join(json.dumps(r) for r in [
        {"image": "images/img0.png", "question": "What colour is the shape?"},
        {"image": "images/img1.png", "question": "How many squares are there?", "id": 7},
        {"image": "images/missing.png", "question": "What is it?"},
    ]) + "\n")
    first = run(asked, tmp_path / "first.jsonl")
    assert [r.get("id") for r in first] == [None, 7, None]  # the records come back with their own fields
    assert all(r["prediction"].strip() for r in first[:2]) and first[2]["error"].startswith("image not found")
    # to a spreadsheet: the "id" only the second record has becomes a column, not a silent drop
    table = run(asked, tmp_path / "first.csv")
    assert [r["id"] for r in table] == ["", "7", ""] and [r["prediction"] for r in table[:2]] == [r["prediction"] for r in first[:2]]
    assert list(table[0])[:3] == ["image", "question", "id"] and list(table[0])[-1] == "error"

    # the same questions as Excel writes a CSV (BOM, CRLF, other case), with answers: one right as a person
    # would write it (case, article, full stop), one wrong, one whose image is missing (wrong, not left out)
    scored = tmp_path / "scored.csv"
    rows = [["Image", "Question", "Answer", "QuestionID"],
            ["images/img0.png", "What colour is the shape?", f"The {first[0]['prediction'].upper()}.", "Q-1"],
            ["images/img1.png", "How many squares are there?", "zebra", "Q-2"], ["images/missing.png", "What is it?", "a circle", "Q-3"]]
    scored.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(",".join(f'"{c}"' for c in row) for row in rows).encode() + b"\r\n")
    second = run(scored, tmp_path / "second.jsonl")
    # the user's own column comes back as written, to join on (it came back as "questionid")
    assert [r["QuestionID"] for r in second] == ["Q-1", "Q-2", "Q-3"] and "questionid" not in second[0]
    assert [r["prediction"] for r in second[:2]] == [r["prediction"] for r in first[:2]]
    assert [r["correct"] for r in second] == [True, False, False]
    summary = json.loads((tmp_path / "second.jsonl.summary.json").read_text())
    assert summary["correct"] == 1 and summary["answered"] == 3
    assert "pope" not in summary  # not a yes/no set

    # POPE's label file as downloaded (JSON Lines named .json): its numbers too, the answers read as POPE reads them
    pope = tmp_path / "coco_pope_random.json"
    pope.write_text("".join(json.dumps({"question_id": i, "image": image, "text": "Is there a circle in the image?",
                                        "label": label}) + "\n" for i, (image, label) in
                            enumerate([("images/img0.png", "yes"), ("images/img1.png", "no"), ("images/missing.png", "yes")])))
    fourth = run(pope, tmp_path / "pope.jsonl")
    read = [pope_answer(r["prediction"]) for r in fourth[:2]]
    summary = json.loads((tmp_path / "pope.jsonl.summary.json").read_text())
    assert summary["pope"]["questions"] == 2  # the one whose image is missing has no answer to read
    assert not (tmp_path / "pope.jsonl.vqa_results.json").exists()  # not VQAv2's file: nothing for its server
    assert summary["pope"]["accuracy"] == ((read[0] == "yes") + (read[1] == "no")) / 2
    assert summary["pope"]["yes_ratio"] == read.count("yes") / 2

    # VQAv2-style: ten human answers each ({"answer": ...} objects as in its annotations), scored by VQA accuracy
    vqa = tmp_path / "vqa.jsonl"
    said = first[0]["prediction"]
    vqa.write_text("\n".join(json.dumps(r) for r in [
        {"image": "images/img0.png", "question": "What colour is the shape?", "answers": [{"answer": said}] * 2 + [{"answer": "x"}] * 8},
        {"image": "images/img1.png", "question": "How many squares are there?", "answers": ["zebra"] * 10},
        {"image": "images/missing.png", "question": "What is it?", "answers": ["circle"] * 10},
    ]) + "\n")
    third = run(vqa, tmp_path / "third.jsonl")
    # two humans of ten gave the answer: 2/3 on the eight subsets keeping both, 1/3 on the two that leave one out
    assert third[0]["vqa_accuracy"] == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)
    assert [r["vqa_accuracy"] for r in third[1:]] == [0.0, 0.0]  # wrong, and no answer (missing image) counts 0
    summary = json.loads((tmp_path / "third.jsonl.summary.json").read_text())
    assert summary["vqa_scored"] == 3 and summary["vqa_accuracy"] == pytest.approx(third[0]["vqa_accuracy"] / 3)

    # LLaVA-1.5's way to score VQAv2: a line after each question asks for a short answer; the output keeps the question
    short = "Answer the question using a single word or phrase."
    data = QuestionsPredictDataModule(questions_file=str(vqa), tokenizer=str(backbones[0]), image_processor=str(backbones[1]),
                                      instruction=short)
    data.setup("predict")
    tokenizer = data.tokenizer
    assert tokenizer.decode(data.dataset[0]["input_ids"]).count(f"What colour is the shape?\n{short}") == 1
    assert data.dataset[0]["record"]["question"] == "What colour is the shape?"

    # LLaVA's own evaluation files (llava-bench, MME, POPE) name the question "text": refused as "no question"
    llava_eval = tmp_path / "llava_eval.jsonl"
    llava_eval.write_text('{"question_id": 0, "image": "images/img0.png", "text": "What colour is the shape?", "category": "conv"}\n')
    data = QuestionsPredictDataModule(questions_file=str(llava_eval), tokenizer=str(backbones[0]), image_processor=str(backbones[1]))
    data.setup("predict")
    assert tokenizer.decode(data.dataset[0]["input_ids"]).count("What colour is the shape?") == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "images/img0.png", "question": "Fine?"}\n{"image": "images/img0.png"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: no question \(column question, or text as LLaVA's evaluation files\)"):
        QuestionsPredictDataModule(questions_file=str(bad), tokenizer=str(backbones[0]), image_processor=str(backbones[1])).setup("predict")
    # the instruct stage's own val file (LLaVA conversations): "no question" of a record that plainly holds questions
    conversations = tmp_path / "val.json"
    conversations.write_text(json.dumps([{"id": "1", "image": "images/img0.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "Red."}]}]))
    with pytest.raises(DataError, match=r"val.json, record 1: no question \(column question, or text as LLaVA's evaluation files\); "
                                        r"a conversation \(LLaVA's training layout\) is scored by mmcaption validate or test with "
                                        r"the instruct stage's config \(its data val_file\)"):
        QuestionsPredictDataModule(questions_file=str(conversations), tokenizer=str(backbones[0]),
                                   image_processor=str(backbones[1])).setup("predict")


def write_vqa(folder: Path, subtype: str, questions: list[tuple[int, int, str]], answers: dict[int, tuple[list[str], str]] | None = None):
    """VQAv2's official questions file (and annotations file) for ``(question_id, image_id, question)``."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {"info": {"description": "VQA v2"}, "license": {}, "data_type": "mscoco", "data_subtype": subtype}
    asked = folder / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    asked.write_text(json.dumps({**info, "task_type": "Open-Ended",
                                 "questions": [{"image_id": i, "question": q, "question_id": qid} for qid, i, q in questions]}))
    if answers is None:
        return asked, None
    image_of = {qid: i for qid, i, _ in questions}
    notes = folder / f"v2_mscoco_{subtype}_annotations.json"
    notes.write_text(json.dumps({**info, "annotations": [
        {"question_id": qid, "image_id": image_of[qid], "question_type": "what", "answer_type": kind,
         "multiple_choice_answer": said[0], "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": n + 1} for n, a in enumerate(said)]}
        for qid, (said, kind) in answers.items()]}))
    return asked, notes


def test_ok_vqas_files_are_scored_per_knowledge_category(backbones, trained_checkpoint, image_folder, tmp_path):
    # OK-VQA ships VQAv2's format (OpenEnded_mscoco_val2014_questions.json, mscoco_val2014_annotations.json), its
    # annotations' question_types naming each question type's knowledge category ("one": "Vehicles and
    # Transportation"), the accuracy its paper reports per category; its answer type is "other" for every question, so
    # the summary's only breakdown said nothing
    from PIL import Image

    from mmcaption.data import QuestionsPredictDataModule

    coco = tmp_path / "coco" / "val2014"
    coco.mkdir(parents=True)
    for image_id, name in ((42, "img0.png"), (7, "img1.png")):
        Image.open(image_folder / name).convert("RGB").save(coco / f"COCO_val2014_{image_id:012d}.jpg")
    asked, notes = write_vqa(tmp_path / "okvqa", "val2014", [(420, 42, "What sport is this for?"), (70, 7, "Who makes it?")],
                             {420: (["race"] * 10, "other"), 70: (["zebra"] * 10, "other")})
    content = json.loads(notes.read_text())
    content["annotations"][0]["question_type"], content["annotations"][1]["question_type"] = "one", "two"
    content["question_types"] = {"one": "Vehicles and Transportation", "two": "Brands, Companies and Products"}
    notes.write_text(json.dumps(content))
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    module.generation.update(min_new_tokens=1, max_new_tokens=3)
    data = QuestionsPredictDataModule(questions_file=str(asked), annotations_file=str(notes), image_root=str(tmp_path / "coco"),
                                      output=str(tmp_path / "okvqa.jsonl"), tokenizer=str(backbones[0]),
                                      image_processor=str(backbones[1]), batch_size=2, num_workers=0)
    predictor(tmp_path).predict(module, datamodule=data)
    rows = [json.loads(line) for line in (tmp_path / "okvqa.jsonl").read_text().splitlines()]
    assert [r["category"] for r in rows] == ["Vehicles and Transportation", "Brands, Companies and Products"]
    summary = json.loads((tmp_path / "okvqa.jsonl.summary.json").read_text())
    assert set(summary["vqa_per_category"]) == {"Vehicles and Transportation", "Brands, Companies and Products"}
    assert [v["questions"] for v in summary["vqa_per_category"].values()] == [1, 1]


def test_vqav2_official_files_are_joined_scored_per_answer_type_and_read_back_from_csv(backbones, trained_checkpoint, image_folder, tmp_path):
    from PIL import Image

    from mmcaption.data import QuestionsPredictDataModule
    from mmcaption.data.questions import read_questions
    from mmcaption.evaluation.answers import normalise_answer

    coco = tmp_path / "coco" / "val2014"  # as COCO's val2014.zip unpacks
    coco.mkdir(parents=True)
    for image_id, name in ((42, "img0.png"), (7, "img1.png")):
        Image.open(image_folder / name).convert("RGB").save(coco / f"COCO_val2014_{image_id:012d}.jpg")
    questions = [(420, 42, "What colour is the shape?"), (421, 42, "Is there a shape?"), (70, 7, "How many squares are there?")]

    def run(asked, notes, output, **settings):
        module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
        module.generation.update(min_new_tokens=3, max_new_tokens=5)
        data = QuestionsPredictDataModule(questions_file=str(asked), annotations_file=notes and str(notes), output=str(output),
                                          tokenizer=str(backbones[0]), image_processor=str(backbones[1]), batch_size=2, num_workers=0,
                                          **settings)
        predictor(tmp_path).predict(module, datamodule=data)
        return output

    # the questions alone (test-dev has no annotations): answered, not scored; images found under <root>/val2014/
    asked, _ = write_vqa(tmp_path / "coco", "val2014", questions)
    # test-dev's results must answer every test2015 question: those not asked here get an empty answer
    every, _ = write_vqa(tmp_path / "all", "test2015", [*questions, (9, 3, "Why?"), (8, 3, "Where?")])
    first = [json.loads(line) for line in run(asked, None, tmp_path / "first.jsonl", submission_questions_file=str(every)).read_text().splitlines()]
    assert [(r["question_id"], r["image_id"], r["image"]) for r in first] == [
        (420, 42, "COCO_val2014_000000000042.jpg"), (421, 42, "COCO_val2014_000000000042.jpg"), (70, 7, "COCO_val2014_000000000007.jpg")]
    assert all(r["error"] is None and r["prediction"].strip() and "vqa_accuracy" not in r for r in first)
    said = [r["prediction"] for r in first]
    # a submission file of another split (val2014's for test-dev) named questions the server does not know, and not
    # the ones asked, silently: refused before a question is asked
    other, _ = write_vqa(tmp_path / "other", "val2014", [(9, 3, "Why?"), (421, 42, "Is there a shape?")])
    with pytest.raises(DataError, match=r"submission_questions_file .*other.* lacks 2 of the 3 questions of .* \(question_id 420\)"):
        run(asked, None, tmp_path / "wrong.jsonl", submission_questions_file=str(other))
    assert not (tmp_path / "wrong.jsonl").exists()
    # and the answers as VQA's evaluation server takes them (test-dev is scored there), normalised as scored here
    submitted = json.loads((tmp_path / "first.jsonl.vqa_results.json").read_text())
    assert submitted == [{"question_id": r["question_id"], "answer": normalise_answer(r["prediction"])} for r in first] + [
        {"question_id": 9, "answer": ""}, {"question_id": 8, "answer": ""}]
    # that output replaced by other questions' answers: the earlier run's file for the server goes with it (it stayed,
    # beside an output it no longer belonged to)
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"image": str(coco / "COCO_val2014_000000000007.jpg"), "question": "What is it?"}) + "\n")
    run(plain, None, tmp_path / "first.jsonl", overwrite=True)
    assert not (tmp_path / "first.jsonl.vqa_results.json").exists()

    # with the annotations: ten human answers and an answer type each; the mean VQA accuracy per answer type
    answers = {420: ([said[0]] * 10, "other"), 421: ([said[1]] * 2 + ["maybe"] * 8, "yes/no"), 70: (["zebra"] * 10, "number")}
    asked, notes = write_vqa(tmp_path / "coco", "val2014", questions, answers)
    output = run(asked, notes, tmp_path / "scored.csv", image_root=str(coco))  # the image folder itself works too
    rows = list(csv.DictReader(output.open(newline="", encoding="utf-8")))
    two_of_ten = (8 * 2 / 3 + 2 * 1 / 3) / 10
    assert [float(r["vqa_accuracy"]) for r in rows] == pytest.approx([1.0, two_of_ten, 0.0])
    assert [r["answer_type"] for r in rows] == ["other", "yes/no", "number"]
    summary = json.loads((tmp_path / "scored.csv.summary.json").read_text())
    assert summary["vqa_accuracy"] == pytest.approx((1.0 + two_of_ten) / 3)
    assert summary["vqa_per_answer_type"] == {"number": {"vqa_accuracy": 0.0, "questions": 1},
                                              "other": {"vqa_accuracy": 1.0, "questions": 1},
                                              "yes/no": {"vqa_accuracy": pytest.approx(two_of_ten), "questions": 1}}

    # that CSV (answers as JSON lists in their cells) is a questions file again, scored the same
    again = read_questions(output)
    assert [q.record["answers"] for q in again] == [said_ for said_, _ in answers.values()]

    # files that do not go together are refused before anything runs, naming what is wrong
    _, other_split = write_vqa(tmp_path / "train", "train2014", questions, answers)
    with pytest.raises(DataError, match=r"annotates 'train2014', .*questions\.json asks 'val2014'"):
        read_questions(asked, other_split)
    unanswered = json.loads(notes.read_text())
    del unanswered["annotations"][1]["answers"]
    (tmp_path / "unanswered.json").write_text(json.dumps(unanswered))
    with pytest.raises(DataError, match=r"unanswered\.json, question 421: no answers"):
        read_questions(asked, tmp_path / "unanswered.json")
    _, partial = write_vqa(tmp_path / "partial", "val2014", questions, {420: answers[420]})
    with pytest.raises(DataError, match=r"has no annotation for 2 of the 3 questions of .*\(question_id 421, 70\)"):
        read_questions(asked, partial)
    with pytest.raises(DataError, match=r"none of the first 2 questions' images \(COCO_val2014_000000000042\.jpg, \.\.\.\) is in"):
        run(asked, notes, tmp_path / "never.jsonl", image_root=str(tmp_path / "elsewhere"))
    # the two files given the other way round: each is named for what it is (it was "a .json questions file is ...")
    with pytest.raises(DataError, match=r"annotations\.json is VQAv2's annotations file \(the human answers\), not its questions"):
        read_questions(notes, asked)
    with pytest.raises(DataError, match=r"questions\.json is a questions file, not VQAv2's annotations"):
        read_questions(asked, asked)
    # only COCO 2017's images: the same photos, named by their id alone, split anew into train2017/ and val2017/
    coco2017 = tmp_path / "coco2017"
    for image_id, folder in ((42, "train2017"), (7, "val2017")):
        (coco2017 / folder).mkdir(parents=True)
        shutil.copy(coco / f"COCO_val2014_{image_id:012d}.jpg", coco2017 / folder / f"{image_id:012d}.jpg")
    rows = list(csv.DictReader(run(asked, notes, tmp_path / "from2017.csv", image_root=str(coco2017)).open(newline="", encoding="utf-8")))
    assert [(r["image"], r["error"], float(r["vqa_accuracy"])) for r in rows] == [
        ("COCO_val2014_000000000042.jpg", "", 1.0), ("COCO_val2014_000000000042.jpg", "", pytest.approx(two_of_ten)),
        ("COCO_val2014_000000000007.jpg", "", 0.0)]
    # the first question's image missing (a partial download) is that question's error, not the whole file's
    partial_images = Path(shutil.copytree(coco, tmp_path / "partial_coco" / "val2014"))
    (partial_images / "COCO_val2014_000000000042.jpg").unlink()
    data = QuestionsPredictDataModule(questions_file=str(asked), image_root=str(partial_images.parent), output=str(tmp_path / "p.jsonl"),
                                      tokenizer=str(backbones[0]), image_processor=str(backbones[1]), batch_size=2, num_workers=0)
    data.setup("predict")
    assert ["not found" in (data.dataset[i]["error"] or "") for i in range(3)] == [True, True, False]
    listed = tmp_path / "asked.jsonl"
    listed.write_text(json.dumps({"image": "images/img0.png", "question": "What?"}) + "\n")
    with pytest.raises(DataError, match=r"annotations_file .* goes with VQAv2's official questions file"):
        read_questions(listed, notes)
    predictions_json = tmp_path / "predictions.json"
    predictions_json.write_text(json.dumps([{"question_id": 1, "answer": "yes"}]))
    # a list is read as question objects now (as one written with json.dump): a results file's rows are refused by record
    with pytest.raises(DataError, match=r"predictions\.json, record 1: no image \(column image or img_path\); no question"):
        read_questions(predictions_json)


def test_export_card_has_hub_metadata_and_says_how_the_model_was_trained(backbones, trained_checkpoint, tmp_path):
    from huggingface_hub import ModelCard

    checkpoint = torch.load(trained_checkpoint, weights_only=False)
    # as a fit with a ModelCheckpoint callback monitoring val/loss records it
    checkpoint["callbacks"] = {"ModelCheckpoint{'monitor': 'val/loss'}": {"monitor": "val/loss", "best_model_score": torch.tensor(1.2345)}}
    checkpoint["run"] = {"log_dir": "lightning_logs/caption/version_3", "seed": "0", "learning_rate": 0.0002,  # as fit records it
                         "trainer": {"max_epochs": 1, "max_steps": -1, "accumulate_grad_batches": 4, "precision": "bf16-mixed"}}
    torch.save(checkpoint, tmp_path / "with_metrics.ckpt")
    export_main([str(tmp_path / "with_metrics.ckpt"), str(tmp_path / "export"), "--license", "mit"])

    card = ModelCard.load(tmp_path / "export" / "README.md")
    assert card.data.license == "mit"
    assert card.data.base_model is None  # local backbone folders are not Hub ids (real ones are: below)
    assert card.data.pipeline_tag == "image-text-to-text" and "mmcaption" in card.data.tags and "nf4" in card.data.tags
    # the Hub's "use this model" snippet follows library_name: PEFT's looked for an adapter at the folder's root
    assert card.data.library_name == "mmcaption"
    # what another machine needs besides the folder (it was unsaid, and the folder failed to load there)
    assert (f"Loading it needs the language model `{checkpoint['hyper_parameters']['config']['language_model']}` and the "
            f"vision tower `{checkpoint['hyper_parameters']['config']['vision_model']}` as well") in card.text
    # PEFT's blank card template named the base model's local path and PEFT as the folder's loader
    adapter_card = (tmp_path / "export" / "adapter" / "README.md").read_text()
    assert "LoRA adapter of an mmcaption model" in adapter_card and str(tmp_path) not in adapter_card
    assert "caption stage: 4 optimizer steps" in card.text
    # a caption-stage model does not claim what only the instruct stage teaches (the card said "visual question answering")
    assert "A captioning model (the caption stage; not instruction-tuned" in card.text
    assert "visual-question-answering" not in card.data.tags
    assert "val/loss: 1.2345" in card.text
    # which run it came from (a checkpoint folder several runs share named none) and what a step was
    assert ("- run: logs `lightning_logs/caption/version_3`, seed 0, learning rate 0.0002, max_epochs 1, max_steps -1, "
            "accumulate_grad_batches 4, precision bf16-mixed") in card.text
    assert f"data_dir `{checkpoint['datamodule_hyper_parameters']['data_dir']}`" in card.text


def test_card_metadata_names_hub_backbones_as_base_models():
    from huggingface_hub import ModelCard

    from mmcaption.model.card import model_card

    manifest = {"model": {"vision_model": "openai/clip-vit-base-patch32", "quantization": "nf4", "compute_dtype": "bfloat16",
                          "cross_attention_layers": [28, 29, 30, 31], "lora_r": 32, "lora_alpha": 64,
                          "lora_target_modules": ["q_proj", "k_proj", "v_proj", "dense"]},
                "merged": False, "base_language_model": "microsoft/phi-2",
                "source": {"hub_dataset": None, "training": {"stage": "caption", "epochs": 4,
                                                              "data": {"source": "hub", "hub_dataset": "org/coco-captions"}}}}
    card = ModelCard(model_card(manifest))
    assert card.data.base_model == ["microsoft/phi-2", "openai/clip-vit-base-patch32"]
    # no license declared unless given: the default was apache-2.0, mmcaption's code's, for weights of any data
    assert card.data.datasets == ["org/coco-captions"] and card.data.license is None
    assert "No license is declared for this model (`mmcaption-export --license`)" in card.text
    # a dataset of the user's own photos, a local folder, is no Hub dataset: its path was the card's `datasets`
    for local in ("~/family_photos", "data/my_captions.jsonl"):  # (a file's relative path, where the export runs without it)
        manifest["source"]["training"]["data"]["hub_dataset"] = local
        assert ModelCard(model_card(manifest)).data.datasets is None, local


def test_an_export_to_share_names_no_home_folder_and_declares_a_license_the_hub_takes(
        trained_checkpoint, tmp_path, tmp_path_factory, monkeypatch, capsys):
    from huggingface_hub import ModelCard

    from mmcaption.model import MultimodalCausalLM

    home = tmp_path_factory.getbasetemp()  # the backbones, the checkpoint and this project all in the home folder
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    shutil.copy(trained_checkpoint, "last.ckpt")
    export_main(["last.ckpt", "shared", "--license", "CC-BY-NC-4.0"])  # SPDX's spelling: the Hub refused the card's upload
    # only relative paths typed, and the card, the page the Hub shows, named /home/<user>/...
    assert str(home) not in Path("shared/README.md").read_text()
    card = ModelCard.load("shared/README.md")
    assert card.data.license == "cc-by-nc-4.0" and "This model is declared `cc-by-nc-4.0`" in card.text
    assert "Exported from `~/" in card.text and "/last.ckpt` (step" in card.text and "the language model `~/" in card.text
    # what loading reads keeps the folders themselves, as transformers and PEFT keep theirs: it loads as before, also
    # for another user of this machine (whose ~ is another folder), and the adapter alone with PEFT
    trained = torch.load(trained_checkpoint, weights_only=False)["hyper_parameters"]["config"]
    assert json.loads(Path("shared/adapter/adapter_config.json").read_text())["base_model_name_or_path"] == trained["language_model"]
    monkeypatch.setenv("HOME", str(tmp_path / "someone-else"))
    model = MultimodalCausalLM.from_pretrained("shared")
    assert (model.config.language_model, model.config.vision_model) == (trained["language_model"], trained["vision_model"])
    monkeypatch.setenv("HOME", str(home))
    capsys.readouterr()

    export_main(["last.ckpt", "unlicensed"])  # said, with the data whose terms a license must allow
    said = capsys.readouterr().err
    assert "note: the model card declares no license: --license <id> declares one" in said and "(" in said.split("terms")[1]
    assert ModelCard.load("unlicensed/README.md").data.license is None
    export_main(["last.ckpt", "typed", "--license", "cc by-nc 4.0"])  # none of the Hub's ids: said, with the closest
    said = capsys.readouterr().err
    assert "warning: --license 'cc by-nc 4.0' is not one of the Hub's license ids" in said and "close: cc-by-nc-4.0" in said


def test_chat_takes_an_image_path_as_a_terminal_writes_a_dropped_file(tmp_path, monkeypatch):
    # a file dragged into a terminal arrives quoted or with its spaces escaped: each was "image not found"
    from mmcaption.chat import dropped_path

    photo = tmp_path / "my photo.jpg"
    photo.write_bytes(b"")
    for typed in (f"'{photo}'", f'"{photo}"', str(photo).replace(" ", "\\ "), str(photo)):
        assert dropped_path(typed) == str(photo), typed
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dropped_path("~/'my photo.jpg'") == str(photo)
    windows = tmp_path / "C:\\Users\\me.jpg"  # a name as typed that exists is kept, its backslashes too
    windows.write_bytes(b"")
    assert dropped_path(str(windows)) == str(windows)


def test_terminal_chat_streams_answers_keeps_the_conversation_and_switches_images(trained_checkpoint, image_folder, tmp_path,
                                                                                 monkeypatch, capsys):
    import io
    import subprocess
    import sys

    from mmcaption.chat import HELP, chat

    out = tmp_path / "export"
    export_main([str(trained_checkpoint), str(out)])
    captioner = Captioner.from_pretrained(out)
    settings = {"max_new_tokens": 5, "min_new_tokens": 5, "num_beams": 1, "do_sample": False}
    first, second = str(image_folder / "img0.png"), str(image_folder / "img1.png")
    lines = io.StringIO(f"What colour is it?\nAnd the shape?\n/image {tmp_path / 'nope.png'}\n/image\n/images please\n/image {second}\n"
                        "What colour is it?\n/reset\nAnd the shape?\n")
    printed = io.StringIO()
    calls, api_chat = [], captioner.chat

    def recording_chat(image, question, history, **kwargs):
        calls.append((image, question, list(history)))
        return api_chat(image, question, history, **kwargs)

    captioner.chat = recording_chat
    assert chat(captioner, first, lines, printed, **settings) == 4
    captioner.chat = api_chat
    text = printed.getvalue().splitlines()

    # each question went with its image and the conversation so far; what was streamed is what was answered
    picture, other = (Path(p).read_bytes() for p in (first, second))
    a1 = api_chat(picture, "What colour is it?", [], **settings)
    assert calls == [(picture, "What colour is it?", []), (picture, "And the shape?", [("What colour is it?", a1)]),
                     (other, "What colour is it?", []), (other, "And the shape?", [])]  # /image and /reset: no history
    answers = [api_chat(*call, **settings) for call in calls]
    assert text == [answers[0], answers[1], f"(image not found: {tmp_path / 'nope.png'}; still about {first})",
                    f"(/image needs the image's path: /image photo.jpg; still about {first})",  # was "image . is a folder"
                    f"({HELP})",  # "/images please": no command (was /image of "s please", not found)
                    f"(now about {second}: a new conversation)", answers[2], "(a new conversation)", answers[3]]
    assert all(answer.strip() for answer in answers)
    # questions from Notepad's UTF-8 file (a BOM first): its /image line was asked as a question, and /quit answered
    printed = io.StringIO()
    assert chat(captioner, first, io.StringIO(f"\ufeff/image {second}\nWhat colour is it?\n"), printed, **settings) == 1
    assert printed.getvalue().splitlines() == [f"(now about {second}: a new conversation)", answers[2]]
    assert chat(captioner, first, io.StringIO("\ufeff/quit\nWhat colour is it?\n"), io.StringIO(), **settings) == 0
    printed = io.StringIO()  # Ctrl-D at the prompt: the shell's prompt then starts a line of its own
    assert chat(captioner, first, io.StringIO(""), printed, interactive=True, **settings) == 0
    assert printed.getvalue() == "you> \n"
    # a conversation grown past the language model's context is said, and the chat goes on (it ended in a traceback)
    context = captioner.model.language_model.config.max_position_embeddings
    printed = io.StringIO()
    long = "what " * context
    assert chat(captioner, first, io.StringIO(f"What colour is it?\n{long}\n/reset\nAnd the shape?\n"), printed, **settings) == 2
    said = printed.getvalue().splitlines()[1]
    assert said.startswith("(the conversation takes ") and said.endswith(
        "ask a shorter question; /reset starts a new conversation)"), said
    # an answer cut where the context ends is said so, with /reset (it was sent to --max_new_tokens, which gives no more)
    import contextlib

    words = context
    while len(captioner.template.prompt(("what " * words).strip(), captioner.tokenizer)) > context - 3:
        words -= 1
    noted = io.StringIO()
    with contextlib.redirect_stderr(noted):
        chat(captioner, first, io.StringIO(("what " * words).strip() + "\n"), io.StringIO(), max_new_tokens=50,
             suppress_tokens=[captioner.tokenizer.eos_token_id])
    assert noted.getvalue() == ("note: the answer stopped where the language model's context ends, before its end: /reset "
                                "starts a new conversation, whose history takes none of it\n")

    # the console command through a pipe; a folder that is not a model is refused in one line
    # (a line of other bytes, Latin-1 from an old file, is skipped with a note: it ended the chat in a traceback)
    result = subprocess.run([sys.executable, "-m", "mmcaption", "chat", "--model", str(out), "--image", first,
                             "--max_new_tokens", "5", "--min_new_tokens", "5"],
                            input="Qu\xe9 couleur ?\nWhat colour is it?\n".encode("latin-1"), capture_output=True, timeout=300)
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["(not UTF-8 text, skipped: b'Qu\\xe9 couleur ?')", answers[0]]
    assert "Warning" not in result.stderr and "Loading weights" not in result.stderr  # the libraries' noise, per weight file
    # an answer cut at the length limit is said to be (beside the answers, once), not left to read as a whole one
    assert result.stderr.count("note: the answer stopped at the length limit (5 new tokens) before its end: --max_new_tokens "
                               "raises it\n") == 1, result.stderr
    # a caption-stage model answered with garbage and no word; predict said so of such a checkpoint already
    assert f"note: {out} is a caption-stage model: the instruct stage teaches to answer questions and chat" in result.stderr
    result = subprocess.run([sys.executable, "-m", "mmcaption", "chat", "--model", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "is not a model folder" in result.stderr
    # into a file where the console's code page is not UTF-8 (Windows' cp1252): text beyond it ended the chat
    result = subprocess.run([sys.executable, "-m", "mmcaption", "chat", "--model", str(out), "--image", first, "--max_new_tokens", "2"],
                            input="/image 图.png\n".encode(), capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONIOENCODING": "cp1252"})
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert result.stdout.decode("utf-8").startswith("(image not found: 图.png")

    # Ctrl-C while an answer streams in a terminal ends that answer, not the chat and its conversation (it ended both);
    # a further Ctrl-C stops as the first did, and in a pipe it ends the chat
    import signal
    import time

    from mmcaption.chat import main as chat_main
    from mmcaption.errors import Interrupted, signals_stop

    def stopped_chat(image, question, history, **kwargs):
        if question == "Tell me a long story":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, reaching the process as it generates
            time.sleep(30)
        return api_chat(image, question, history, **kwargs)

    captioner.chat, printed = stopped_chat, io.StringIO()
    with signals_stop():
        assert chat(captioner, first, io.StringIO("Tell me a long story\nWhat colour is it?\n"), printed, interactive=True,
                    **settings) == 1
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
    assert printed.getvalue() == ("you> model> \n(stopped: this answer is left out of the conversation; Ctrl-C at the prompt "
                                  f"ends the chat)\nyou> model> {answers[0]}\nyou> \n")  # asked with no history
    with signals_stop(), pytest.raises(Interrupted):
        chat(captioner, first, io.StringIO("Tell me a long story\nWhat colour is it?\n"), io.StringIO(), **settings)
    captioner.chat = api_chat
    # a pipe's questions past the context: each said among the answers, and the chat exits as a failure (it exited 0)
    for stream in ("stdin", "stdout"):
        monkeypatch.setattr(sys, stream, io.StringIO(f"What colour is it?\n{long}\nAnd the shape?\n" if stream == "stdin" else ""))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        chat_main(["--model", str(out), "--image", first, "--max_new_tokens", "5", "--min_new_tokens", "5"])
    lines = sys.stdout.getvalue().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 3 and lines[1].startswith("(the conversation takes ")
    assert "1 question was not answered, past the language model's context (first: 'what what what" in \
        capsys.readouterr().err


def test_the_python_api_takes_hugging_face_habits_and_threads(trained_checkpoint, tmp_path):
    import threading

    import numpy as np
    from transformers import GenerationConfig

    out = tmp_path / "export"
    export_main([str(trained_checkpoint), str(out)])
    captioner = Captioner.from_pretrained(out)
    rng = random.Random(0)
    images = [draw_scene(Scene(colour, shape, "left"), 64, rng) for colour, shape in
              [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("white", "diamond")]]
    alone = captioner.caption(images, max_new_tokens=6, min_new_tokens=6)
    assert len(set(alone)) > 1, alone  # different images, different captions: a mix-up would show

    # two threads on one captioner (a web server's): each got the other's images, or a size mismatch
    results, failures = {}, []

    def work(key, **settings):
        try:
            results[key] = [captioner.caption(images, max_new_tokens=6, min_new_tokens=6, **settings) for _ in range(3)]
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=work, args=("greedy",)), threading.Thread(target=work, args=("beams",), kwargs={"num_beams": 2})]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and results["greedy"] == [alone] * 3
    assert results["beams"] == [captioner.caption(images, max_new_tokens=6, min_new_tokens=6, num_beams=2)] * 3

    # transformers' own ways to give settings: a GenerationConfig, NumPy numbers, max_length, stop_strings
    assert captioner.caption(images[0], generation_config=GenerationConfig(max_new_tokens=6, min_new_tokens=6)) == alone[0]
    assert captioner.caption(images[0], max_new_tokens=np.int64(6), min_new_tokens=np.int64(6)) == alone[0]
    prompt_length = len(captioner.tasks.prompt_batch([caption_prompt_ids(captioner.tokenizer, captioner.caption_prompt)])["input_ids"][0])
    longer = captioner.caption(images[0], max_length=prompt_length + 40, min_new_tokens=40)
    assert len(captioner.tokenizer(longer)["input_ids"]) > 32  # the folder's own max_new_tokens (32) did not win
    with pytest.raises(ConfigError, match="generation: max_new_tokens -1 must be 1 or more"):  # a KeyError before
        captioner.caption(images[0], max_new_tokens=-1)
    with pytest.raises(ConfigError, match="return_dict_in_generate, output_scores: the task methods return texts"):
        captioner.caption(images[0], return_dict_in_generate=True, output_scores=True)
    whole = captioner.caption(images[0], max_new_tokens=12, min_new_tokens=12)
    word = whole.split()[2]
    # the same settings but the stop string (with min_new_tokens 1 a tiny model may end sooner on its own)
    stopped = captioner.caption(images[0], max_new_tokens=12, min_new_tokens=12, stop_strings=[word])
    assert stopped.endswith(word) and whole.startswith(stopped) and len(stopped) < len(whole), (whole, stopped)

    # several samples per image come grouped per image, none dropped
    torch.manual_seed(0)
    grouped = captioner.caption(images[:2], do_sample=True, num_return_sequences=3, max_new_tokens=6)
    assert [len(group) for group in grouped] == [3, 3] and all(isinstance(text, str) for group in grouped for text in group)
    assert len(captioner.caption(images[0], do_sample=True, num_return_sequences=2, max_new_tokens=6)) == 2
    assert len(captioner.caption(images[0], generation_config=GenerationConfig(num_return_sequences=2, num_beams=2))) == 2
    assert [len(group) for group in captioner.answer(images[:2], ["What is it?"] * 2, num_return_sequences=2, num_beams=2)] == [2, 2]

    # a question holding bytes that are not UTF-8 (read with surrogateescape) is refused by name, not a tokenizer TypeError
    with pytest.raises(ValueError, match=r"question 0 is not text: 'Qu\\udce9 couleur \?' holds bytes that are not UTF-8"):
        captioner.answer(images[0], "Qu\udce9 couleur ?")

    # a folder copied in part is named before the model loads (a missing tokenizer/ was looked for on the Hub)
    partial = Path(shutil.copytree(out, tmp_path / "partial"))
    shutil.rmtree(partial / "tokenizer")
    with pytest.raises(NotAModelFolderError, match=rf"{partial} lacks tokenizer of a saved model folder"):
        Captioner.from_pretrained(partial)


def test_export_with_its_backbones_works_where_the_original_backbones_are_not(trained_checkpoint, tmp_path):
    image = draw_scene(Scene("red", "circle", "left"), 64, random.Random(0))
    export_main([str(trained_checkpoint), str(tmp_path / "plain")])
    export_main([str(trained_checkpoint), str(tmp_path / "whole"), "--include_backbones"])
    assert (tmp_path / "whole" / "backbones" / "language_model" / "config.json").is_file()
    assert (tmp_path / "whole" / "backbones" / "vision_model" / "preprocessor_config.json").is_file()
    assert "the folder loads with nothing else, offline" in (tmp_path / "whole" / "README.md").read_text()
    assert "Loading it needs" not in (tmp_path / "whole" / "README.md").read_text()
    # a folder to share: readable by others as the umask allows (a temporary folder and safetensors' files are private)
    mask = os.umask(0o022)
    os.umask(mask)
    for path in (tmp_path / "whole", *(tmp_path / "whole").rglob("*")):
        assert path.stat().st_mode & 0o777 == (0o777 if path.is_dir() else 0o666) & ~mask, path

    # as on another machine: the backbones' original locations do not exist there
    moved = tmp_path / "elsewhere" / "whole"
    (tmp_path / "whole").rename(moved.parent.mkdir() or moved)
    manifest = json.loads((moved / "mmcaption.json").read_text())
    manifest["model"].update(language_model="/nonexistent/phi-2", vision_model="/nonexistent/clip")
    (moved / "mmcaption.json").write_text(json.dumps(manifest))
    assert Captioner.from_pretrained(moved).caption(image, min_new_tokens=4) == Captioner.from_pretrained(tmp_path / "plain").caption(image, min_new_tokens=4)
    with pytest.raises(Exception, match="nonexistent"):  # without the copies the same folder cannot load
        manifest.pop("backbones")
        (moved / "mmcaption.json").write_text(json.dumps(manifest))
        Captioner.from_pretrained(moved)


def test_the_model_card_counts_an_epoch_whose_last_batch_a_validation_saved_as_completed():
    """The usual best checkpoint (a validation at an epoch's last batch) said "2 epoch(s) completed" after 3."""
    from mmcaption.export import epochs_completed

    def checkpoint(epoch, started, completed, batches):
        return {"epoch": epoch, "training_data": {"samples": 15000, "batch_size": 32, "devices": 1},
                "loops": {"fit_loop": {"epoch_progress": {"total": {"started": started, "completed": completed}},
                                       "epoch_loop.batch_progress": {"current": {"completed": batches}}}}}

    assert epochs_completed(checkpoint(2, 3, 2, 469)) == 3  # saved at the third epoch's last batch
    assert epochs_completed(checkpoint(2, 3, 2, 200)) == 2  # mid-epoch: two done
    assert epochs_completed(checkpoint(2, 2, 2, 469)) == 2  # saved after Lightning closed the epoch (end of training)
    assert epochs_completed({"epoch": 4}) == 4  # a checkpoint without the loops' record: as it says



def test_a_checkpoint_with_model_settings_this_version_lacks_is_refused_by_name(trained_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(trained_checkpoint, weights_only=False)
    checkpoint["model_config"]["vision_resampler"] = "perceiver"  # a setting another version of mmcaption has
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit) as exited:  # was a bare TypeError from MultimodalConfig
        export_main([str(tmp_path / "other.ckpt"), str(tmp_path / "export")])
    assert exited.value.code == 2
    assert "model settings ['vision_resampler'] are unknown to this version of mmcaption" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()
    # the CLI's way in, --ckpt_path: the same message (it blamed an option never typed: "does not accept option
    # 'model.config.vision_resampler'")
    checkpoint["hyper_parameters"]["config"]["vision_resampler"] = "perceiver"
    torch.save(checkpoint, tmp_path / "other.ckpt")
    from mmcaption.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["predict", "--ckpt_path", str(tmp_path / "other.ckpt"), "--data", "mmcaption.data.CaptionPredictDataModule",
              "--data.images", str(tmp_path), "--data.output", str(tmp_path / "c.jsonl")])
    assert exited.value.code == 2
    assert "error: --ckpt_path " in (err := capsys.readouterr().err) and "model settings ['vision_resampler'] are unknown" in err
    # a setting of another version's module, beside its model's: it was blamed on the command line ("Subcommand 'predict'
    # does not accept option 'model.label_smoothing'"), an option never typed
    del checkpoint["hyper_parameters"]["config"]["vision_resampler"], checkpoint["model_config"]["vision_resampler"]
    checkpoint["hyper_parameters"]["label_smoothing"] = 0.1
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--ckpt_path", str(tmp_path / "other.ckpt"), "--data", "mmcaption.data.CaptionPredictDataModule",
              "--data.images", str(tmp_path), "--data.output", str(tmp_path / "c.jsonl")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"error: --ckpt_path {tmp_path / 'other.ckpt'}: module settings ['label_smoothing'] are unknown to this version of " \
           "mmcaption (saved by another version of mmcaption: install that version to use it)" in err and "accept" not in err


def test_a_folder_a_newer_release_exported_is_refused_naming_its_manifest(trained_checkpoint, tmp_path):
    # its format was written and never read: a newer release's folder loaded as this one's, its new settings left out unsaid
    export_main([str(trained_checkpoint), str(tmp_path / "export")])
    path = tmp_path / "export" / "mmcaption.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format": 2}))
    with pytest.raises(ConfigError, match=rf"^{path} is of folder format 2, which a newer release of mmcaption writes \(this "
                                          r"one reads format 1 and before\): upgrade mmcaption \(pip install -U mmcaption\)"):
        Captioner.from_pretrained(tmp_path / "export")
    path.write_text(json.dumps({**manifest, "format": "1"}))  # (a hand edit)
    with pytest.raises(ConfigError, match=rf"^{path} says format '1', which no release of mmcaption writes \(edited by hand\?\)"):
        Captioner.from_pretrained(tmp_path / "export")
    path.write_text(json.dumps({**manifest, "model": {**manifest["model"], "projector_layers": 2}}))
    with pytest.raises(ConfigError, match=rf"^{path}: model settings \['projector_layers'\] are unknown to this version of "
                                          r"mmcaption \(written by a newer version of mmcaption, or edited by hand\)"):
        Captioner.from_pretrained(tmp_path / "export")
    path.write_text(json.dumps({**manifest, "format": 2}))  # replaced by an export of this release: not refused
    export_main([str(trained_checkpoint), str(tmp_path / "export"), "--overwrite"])
    assert json.loads(path.read_text())["format"] == 1
    assert isinstance(Captioner.from_pretrained(tmp_path / "export").caption(Image.new("RGB", (32, 32)), max_new_tokens=2), str)


def test_a_project_moved_since_training_exports_and_loads_with_the_backbones_new_folders(backbones, trained_checkpoint, tmp_path,
                                                                                         capsys):
    # the checkpoint (and an export) record the backbones' folders as training found them: after `mv project elsewhere`,
    # or a copy to another machine, a symlink at the old absolute path was the only way
    from mmcaption.chat import main as chat_main

    moved = tmp_path / "moved"
    shutil.copytree(backbones[0].parent, moved)
    gone = tmp_path / "gone"  # where training found them
    checkpoint = torch.load(trained_checkpoint, weights_only=False)
    for config in (checkpoint["hyper_parameters"]["config"], checkpoint.get("model_config") or {}):
        config.update(language_model=str(gone / backbones[0].name), vision_model=str(gone / backbones[1].name))
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "old.ckpt"), str(tmp_path / "refused")])
    said = capsys.readouterr().err
    assert said.startswith(f"error: cannot load the language model {gone / backbones[0].name} nor the vision model "
                           f"{gone / backbones[1].name}: neither is a folder (any more)")  # both at once, not one a try
    assert "give where they are now (--language_model / --vision_model of mmcaption-export" in said
    # given relative to here, as people type them: recorded absolute (the export loaded only from this folder)
    with pytest.MonkeyPatch.context() as here:
        here.chdir(tmp_path)
        now = ["--language_model", f"moved/{backbones[0].name}", "--vision_model", f"./moved/{backbones[1].name}"]
        export_main([str(tmp_path / "old.ckpt"), str(tmp_path / "export"), *now])
    recorded = json.loads((tmp_path / "export" / "mmcaption.json").read_text())["model"]
    assert recorded["language_model"] == str(moved / backbones[0].name)  # the export records where they are now
    assert recorded["vision_model"] == str(moved / backbones[1].name)
    image = Image.new("RGB", (32, 32), "red")
    expected = Captioner.from_pretrained(tmp_path / "export").caption(image)
    # that export moved on in turn: its recorded folders gone too
    shutil.move(moved, tmp_path / "again")
    again = {"language_model": str(tmp_path / "again" / backbones[0].name), "vision_model": str(tmp_path / "again" / backbones[1].name)}
    assert Captioner.from_pretrained(tmp_path / "export", **again).caption(image) == expected
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", __import__("io").StringIO("What is it?\n"))
        chat_main(["--model", str(tmp_path / "export"), "--language_model", again["language_model"],
                   "--vision_model", again["vision_model"], "--max_new_tokens", "3"])
    assert capsys.readouterr().out.strip()


def test_the_cards_best_metric_says_which_checkpoint_it_was_measured_for(tmp_path):
    # a last.ckpt exported after a worse validation: its card gave the run's best as this model's own
    from mmcaption.export import training_summary
    from mmcaption.model.card import training_section

    state = {"monitor": "val/loss", "best_model_score": torch.tensor(5.8687), "best_model_path": "/runs/ck/epoch=1-step=40.ckpt"}
    checkpoint = {"callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": state}, "epoch": 3}
    last = training_section({"training": training_summary(checkpoint, "/runs/ck/last.ckpt"), "global_step": 80})
    assert "- val/loss: 5.8687 (the checkpoint callback's best; measured on the validation split, for the run's " \
           "`epoch=1-step=40.ckpt`, not this model's checkpoint)" in last
    best = training_section({"training": training_summary(checkpoint, "/elsewhere/epoch=1-step=40.ckpt"), "global_step": 40})
    assert "- val/loss: 5.8687 (the checkpoint callback's best; measured on the validation split)" in best
    # last.ckpt saved at the validation that was the best: the same weights, so the metric is this model's
    saved = tmp_path / "epoch=3-step=80.ckpt"
    torch.save({"global_step": 80}, saved)
    at_best = {**checkpoint, "global_step": 80, "callbacks": {"ModelCheckpoint": {**state, "best_model_path": str(saved)}}}
    same = training_section({"training": training_summary(at_best, tmp_path / "last.ckpt"), "global_step": 80})
    assert "measured on the validation split)" in same and "not this model's" not in same


def test_a_row_whose_image_cannot_be_read_has_the_processors_own_shape(image_folder, tmp_path):
    # the blank stood in at crop_size, or 224 without one: a processor resizing to 32 x 48 then failed to stack the batch
    from transformers import CLIPImageProcessor

    from mmcaption.collate import collate
    from mmcaption.data.predict import _CaptionRows

    processor = CLIPImageProcessor(do_center_crop=False, size={"height": 32, "width": 48})
    rows = _CaptionRows([("img0.png", image_folder / "img0.png"), ("missing.png", tmp_path / "missing.png")], processor, [1, 2])
    assert rows[1]["error"] and rows[1]["pixel_values"].shape == rows[0]["pixel_values"].shape == (3, 32, 48)
    assert collate([rows[0], rows[1]], pad_token_id=0)["pixel_values"].shape == (2, 3, 32, 48)


def test_chat_talks_with_a_training_checkpoint_as_with_its_export(trained_checkpoint, image_folder, tmp_path, capsys, monkeypatch):
    # `mmcaption chat --model last.ckpt` was told "a training checkpoint is given as --checkpoint", which chat did not have
    from mmcaption.chat import main as chat_main

    image = str(image_folder / "img0.png")
    export_main([str(trained_checkpoint), str(tmp_path / "export")])
    capsys.readouterr()
    answers = []
    for source in (["--checkpoint", str(trained_checkpoint)], ["--model", str(tmp_path / "export")]):
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO("What colour is it?\n"))
        chat_main([*source, "--image", image, "--max_new_tokens", "5", "--min_new_tokens", "5"])
        said = capsys.readouterr()
        answers.append(said.out.strip())
        assert "license" not in said.err  # the export's note of its model card, in a folder chat throws away: no --license
    assert answers[0] and answers[0] == answers[1]
    with pytest.raises(SystemExit):
        chat_main(["--model", str(trained_checkpoint)])
    assert capsys.readouterr().err.strip() == f"error: {trained_checkpoint} is a file: a training checkpoint is given as --checkpoint"
    for flag in ("--model", "--checkpoint"):  # the checkpoints' folder: the file in it named
        with pytest.raises(SystemExit):
            chat_main([flag, str(trained_checkpoint.parent)])
        assert capsys.readouterr().err.strip().endswith(f"; it holds checkpoints of fit: --checkpoint {trained_checkpoint}")


def test_chat_and_the_scripts_started_without_readable_standard_streams_say_so_or_go_on(trained_checkpoint, image_folder, tmp_path,
                                                                                        capsys, monkeypatch):
    # under nohup (from a terminal) standard input is /dev/null opened for writing: chat ended in a traceback (EBADF)
    import subprocess
    import sys

    if not Path("/proc/self/fd").is_dir() or not shutil.which("bash"):
        pytest.skip("closes a process's standard streams with bash, and reads them from /proc (Linux)")

    from mmcaption.chat import main as chat_main

    unreadable = open(os.open(os.devnull, os.O_WRONLY), encoding="utf-8")  # noqa: SIM115
    monkeypatch.setattr("sys.stdin", unreadable)
    with pytest.raises(SystemExit) as exited:
        chat_main(["--checkpoint", str(trained_checkpoint), "--image", str(image_folder / "img0.png")])
    unreadable.close()
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        "error: mmcaption chat reads its questions from standard input, which cannot be read here (Bad file descriptor; nohup "
        "gives a command one it cannot read): give them in a file or a pipe (mmcaption chat ... < questions.txt)")
    # standard input, output and error closed by the launcher (`>&- 2>&- <&-`): the run's first files took their numbers (its
    # checkpoint folder's lock became standard output), and sys.stdin was None (chat's traceback); they are the null device
    # (and the processes it starts, as the Java tools of a validation, get them too)
    probe = ("import os, subprocess, sys; from mmcaption.scripts import _standard_streams; _standard_streams(); "
             "lock = os.open('lock', os.O_CREAT | os.O_WRONLY); "
             "child = subprocess.run([sys.executable, '-c', 'import os; [os.fstat(n) for n in (0, 1, 2)]']).returncode; "
             "import json; open('seen', 'w').write(json.dumps([lock, sys.stdin.read(), [os.readlink(f'/proc/self/fd/{n}') for n in (0, 1, 2)], child]))")
    subprocess.run(["bash", "-c", f'"{sys.executable}" -c "{probe}" >&- 2>&- <&-'], cwd=tmp_path, check=True)
    lock, read, streams, child = json.loads((tmp_path / "seen").read_text())
    assert lock > 2 and read == "" and streams == [os.devnull] * 3 and child == 0
    # a log file of both streams (`> run.log 2>&1`) has the lines in the order printed: standard output was held back
    # until its buffer filled or the process ended (the demo's report after every later note)
    probe = ("import sys; from mmcaption.scripts import _standard_streams; _standard_streams(); "
             "print('report'); print('note', file=sys.stderr); print('end')")
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}  # as a user's shell has it
    subprocess.run(["bash", "-c", f'"{sys.executable}" -c "{probe}" > log 2>&1'], cwd=tmp_path, env=buffered, check=True)
    assert (tmp_path / "log").read_text().splitlines() == ["report", "note", "end"]


def test_chat_answers_with_the_models_own_generation_settings_as_the_api_does(trained_checkpoint, image_folder, tmp_path, capsys,
                                                                            monkeypatch):
    # chat used 128 new tokens and greedy search whatever the model was exported with (the API and predict use its own)
    from mmcaption.chat import main as chat_main

    export_main([str(trained_checkpoint), str(tmp_path / "export")])
    manifest = tmp_path / "export" / "mmcaption.json"
    content = json.loads(manifest.read_text())
    content["generation"] = {**content.get("generation", {}), "max_new_tokens": 6, "min_new_tokens": 6, "repetition_penalty": 2.0}
    manifest.write_text(json.dumps(content))
    image, question = str(image_folder / "img0.png"), "What colour is it?"
    captioner = Captioner.from_pretrained(tmp_path / "export")
    expected = captioner.chat(image, question, [])
    assert expected == captioner.chat(image, question, [], max_new_tokens=6, min_new_tokens=6, repetition_penalty=2.0)
    capsys.readouterr()
    given, chat = [], Captioner.chat
    monkeypatch.setattr(Captioner, "chat", lambda self, *args, **kw: given.append(kw) or chat(self, *args, **kw))
    for flags, settings in (([], {}), (["--max_new_tokens", "8", "--temperature", "0"], {"max_new_tokens": 8, "do_sample": False})):
        monkeypatch.setattr("sys.stdin", io.StringIO(f"{question}\n"))
        chat_main(["--model", str(tmp_path / "export"), "--image", image, *flags])
        answer = capsys.readouterr().out.strip()
        # nothing over the model's own but what was given (128 new tokens, greedy, one beam were sent every time)
        assert {key: value for key, value in given.pop().items() if key != "streamer"} == settings
    assert answer == captioner.chat(image, question, [], max_new_tokens=8, do_sample=False)
    # --top_p where nothing samples: was dropped without a word
    for flags, said in ((["--top_p", "0.5"], "is used only when sampling, and the answers would be not sampled (the model's "
                                             "own settings): give --temperature above 0 with it"),
                        (["--top_p", "0.5", "--temperature", "0"], "is used only when sampling, and --temperature 0 answers "
                                                                   "greedily: give a temperature above 0"),
                        (["--top_p", "5"], "")):  # (a model that samples took it, and failed each answer)
        with pytest.raises(SystemExit):
            chat_main(["--model", str(tmp_path / "export"), *flags])
        assert capsys.readouterr().err.strip().endswith(
            f"error: --top_p {flags[1]} {said}" if said else "error: mmcaption chat: top_p 5.0 must be between 0 and 1")
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{question}\n"))
    chat_main(["--model", str(tmp_path / "export"), "--image", image, "--top_p", "0.5", "--temperature", "0.7"])
    assert {key: value for key, value in given.pop().items() if key != "streamer"} == {
        "do_sample": True, "temperature": 0.7, "top_p": 0.5, "num_beams": 1}


def test_chat_streams_its_answer_ending_as_the_api_ends_it():
    # max_new_tokens cut a character of several tokens in half: the terminal showed "猫がテーブ�" where the API (and
    # the history kept) had "猫がテーブ"
    import io

    from mmcaption.chat import _Stream

    class Tokenizer:  # what TextStreamer's constructor reads
        pass

    out = io.StringIO()
    stream = _Stream(Tokenizer(), out)
    stream.on_finalized_text(" 猫が")
    stream.on_finalized_text("テーブ\ufffd", stream_end=True)
    assert out.getvalue() == "猫がテーブ"


def test_a_script_predicts_without_an_output_file_and_takes_the_rows(backbones, trained_checkpoint, image_folder, tmp_path,
                                                                     monkeypatch):
    # trainer.predict in a script always wrote ./predictions/captions.jsonl, a second call was refused with CLI flags, and
    # output=None was a TypeError
    from mmcaption.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    module = MultimodalCaptioner.load_from_checkpoint(trained_checkpoint)
    data = CaptionPredictDataModule(images=str(image_folder), output=None, tokenizer=str(backbones[0]),
                                    image_processor=str(backbones[1]), batch_size=2, num_workers=0)
    for _ in range(2):  # and again, on the same objects
        rows = [row for batch in predictor(tmp_path).predict(module, datamodule=data) for row in batch]
        assert [Path(row["image"]).name for row in rows] == ["img0.png", "img1.png", "img2.png"]
        assert all(isinstance(row["caption"], str) and not row.get("error") for row in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # nothing written
    with pytest.raises(ConfigError, match="resume goes on from an output"):
        CaptionPredictDataModule(images=str(image_folder), output=None, resume=True)
