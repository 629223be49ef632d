"""Files as public datasets ship them and users' tools write them: Flickr30k's CSV with Karpathy's splits in a column and
its photos in a folder beside it (``nlphuji/flickr30k``), Kaggle's Flickr30k ``results.csv`` separated by ``| `` with a
row short of a field, Kaggle's Flickr8k (``Images/`` and ``captions.txt``) and Flickr's own ``Flickr8k.token.txt`` (alone,
and as Flickr's download has it: ``Flickr8k_text/`` beside ``Flicker8k_Dataset/``, with its split lists), a
conversation file that pandas' records were dumped into (``NaN`` for no image)."""

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
from PIL import Image

from mmcaption.data import DataError
from mmcaption.data.cache import load_table
from mmcaption.data.hub import HubCaptions
from mmcaption.data.llava import read_llava
from mmcaption.data.records import BadRecords
from mmcaption.data.stage_splits import scored_where_trained

from .test_data_coco import make_datamodule
from .test_data_llava import llava  # noqa: F401 - a fixture


def flickr30k_csv(root, splits: list[str]) -> None:
    """``flickr_annotations_30k.csv`` (raw: a JSON list of five captions; sentids; split; filename; img_id) beside
    ``flickr30k-images/``, as the dataset's repository unpacks."""
    (root / "flickr30k-images").mkdir(parents=True)
    lines = ["raw,sentids,split,filename,img_id"]
    for index, split in enumerate(splits):
        Image.new("RGB", (32, 32), (20 * index, 200 - 10 * index, 90)).save(root / "flickr30k-images" / f"{1000 + index}.jpg")
        captions = json.dumps([f"a photo of scene {index} number {k} ." for k in range(5)]).replace('"', '""')
        lines.append(f'"{captions}","{list(range(5 * index, 5 * index + 5))}",{split},{1000 + index}.jpg,{index}')
    (root / "flickr_annotations_30k.csv").write_text("\n".join(lines) + "\n")


def test_a_tables_split_column_gives_its_splits_and_its_photos_are_found_in_the_folder_beside_it(backbones, tmp_path, monkeypatch):
    # Karpathy's Flickr30k in one CSV: it was read as one split with 1% held out, so test images were trained on (and the
    # photos, in flickr30k-images/ beside the CSV, were each "not a file" until every row was rewritten)
    splits = ["train", "test", "train", "val", "restval", "train", "test", "train", "val", "train"]
    flickr30k_csv(tmp_path / "f30k", splits)
    said: list[str] = []
    for module in ("split_column", "hub_images"):
        monkeypatch.setattr(f"mmcaption.data.{module}.rank_zero_info", said.append)
    dm = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(tmp_path / "f30k" / "flickr_annotations_30k.csv"),
                         hub_image_column="filename", hub_caption_column="raw", cache_dir=str(tmp_path / "cache"))
    assert dm.stage_splits() == {"train": "train", "val": "val", "test": "test"}  # Karpathy's test split, as papers score
    dm.prepare_data()
    dm.setup("fit")
    names = {side: sorted(dm.datasets[side].images["file_name"]) for side in ("train", "val")}
    assert names == {"train": ["1000.jpg", "1002.jpg", "1004.jpg", "1005.jpg", "1007.jpg", "1009.jpg"],  # restval trains
                     "val": ["1003.jpg", "1008.jpg"]}
    assert any("its 'split' column divides it into the splits train (6 rows), test (2 rows), val (2 rows); its restval "
               "rows (1) train" in line for line in said), said
    assert any("read from the one file of its name under" in line and "'1000.jpg' is flickr30k-images/1000.jpg" in line
               for line in said), said
    test = make_datamodule(backbones, tmp_path / "unused", source="hub", hub_dataset=str(tmp_path / "f30k" / "flickr_annotations_30k.csv"),
                           hub_image_column="filename", hub_caption_column="raw", test_split="test", cache_dir=str(tmp_path / "cache"))
    test.prepare_data()
    test.setup("test")
    assert sorted(test.datasets["test"].images["file_name"]) == ["1001.jpg", "1006.jpg"]

    # a row without a split is named by its line (no side can be chosen for it)
    table = tmp_path / "f30k" / "flickr_annotations_30k.csv"
    lines = table.read_text().splitlines()
    lines[3] = lines[3].replace(",train,", ",,")
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"1 of its rows have no value in the 'split' column that says the split of the "
                                        r"others \(first: line 4\)"):
        HubCaptions(str(table), "filename", "raw").split_names()


def test_a_photo_name_found_in_two_folders_below_the_table_is_not_guessed(tmp_path):
    flickr30k_csv(tmp_path / "f30k", ["train", "train", "val"])
    (tmp_path / "f30k" / "old").mkdir()
    Image.new("RGB", (32, 32), "red").save(tmp_path / "f30k" / "old" / "1001.jpg")  # another photo of that name
    records = BadRecords("f30k", on_bad_record="skip")
    read = list(HubCaptions(str(tmp_path / "f30k" / "flickr_annotations_30k.csv"), "filename", "raw").records("train", records))
    assert [name for _, name, _, _ in read] == ["1000.jpg"] and records.counts["missing image"] == 1


def test_kaggles_flickr30k_results_csv_reads_at_its_bars_and_its_row_short_of_a_field_is_named(tmp_path):
    # `image_name| comment_number| comment`: refused as one column; its row 19999 lacks a separator, and its caption,
    # in comment_number, was a row without a caption of its own (an image's other rows kept it)
    folder = tmp_path / "flickr30k_images"
    (folder / "flickr30k_images").mkdir(parents=True)
    lines = ["image_name| comment_number| comment"]
    for index in range(3):
        Image.new("RGB", (32, 32), (80 * index, 30, 30)).save(folder / "flickr30k_images" / f"{2000 + index}.jpg")
        lines += [f"{2000 + index}.jpg| {k}| A dog runs {index} {k} ." for k in range(2)]
    lines.insert(5, "2001.jpg| 4 A dog runs across the grass .")
    (folder / "results.csv").write_text("\n".join(lines) + "\n")
    captions = HubCaptions(str(folder / "results.csv"), "image_name", "comment")
    with pytest.raises(DataError, match=r"1 of 7 rows have fewer fields than the header \['image_name', ' comment_number', "
                                        r"'comment'\], so their cells are not under their columns' names \(first: line 6\)"):
        list(captions.records("train", BadRecords("results.csv")))
    records = BadRecords("results.csv", on_bad_record="skip")
    read = list(HubCaptions(str(folder / "results.csv"), "image_name", "comment").records("train", records))
    assert [(name, [c for _, c in texts]) for _, name, _, texts in read] == [
        (f"{2000 + i}.jpg", [f"A dog runs {i} 0 .", f"A dog runs {i} 1 ."]) for i in range(3)]
    assert records.counts["short row"] == 1


def test_a_conversation_file_written_from_a_dataframe_reads_nan_as_no_image(llava):  # noqa: F811 - the fixture
    # json.dump(df.to_dict("records")) writes a text-only row's image as NaN, which Python's JSON reads: it was refused
    # ("its 'image' is not a path") while null read as text-only
    train, image_root = llava
    records = json.loads(train.read_text())[:3]
    records.append({"id": "text-only", "image": float("nan"),
                    "conversations": [{"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello."}]})
    train.write_text(json.dumps(records))
    assert "NaN" in train.read_text()
    read = read_llava(train, image_root, BadRecords(str(train)))
    assert [(c.id, c.image) for c in read][3] == ("text-only", None) and all(c.image for c in read[:3])


def test_kaggles_flickr8k_folder_and_flickrs_own_token_file_read_with_their_photos_in_images(tmp_path, monkeypatch):
    # captions.txt (a CSV named .txt) was "a dataset is a hub id, a folder, or a .parquet, .json(l) or .csv file", and
    # the folder was read as an image folder without captions; the token file (photo#n<TAB>caption) was not read at all
    root = tmp_path / "flickr8k"
    (root / "Images").mkdir(parents=True)
    rows, tokens = ["image,caption"], []
    for index in range(3):
        name = f"10{index}_693b08cb0e.jpg"
        Image.new("RGB", (32, 32), (70 * index, 40, 40)).save(root / "Images" / name)
        rows += [f'{name},"A child {index} , in pink {k} ."' for k in range(2)]
        tokens += [f"{name}#{k}\tA child {index} in pink {k} ." for k in range(2)]
    tokens.append("2258277193_586949ec62.jpg.1#0\tA photo that Flickr8k lists and does not hold .")  # as the real file has
    (root / "captions.txt").write_text("\n".join(rows) + "\n")
    said: list[str] = []
    monkeypatch.setattr("mmcaption.data.folder_layouts.rank_zero_info", said.append)
    for dataset in (root, root / "captions.txt"):
        read = list(HubCaptions(str(dataset), "image", "caption").records("train", BadRecords(str(dataset))))
        assert [(name, [c for _, c in texts]) for _, name, _, texts in read] == [
            (f"10{i}_693b08cb0e.jpg", [f"A child {i} , in pink 0 .", f"A child {i} , in pink 1 ."]) for i in range(3)]
    assert said == [f"{root} holds photos and one table of their captions, captions.txt: the table is read (Kaggle's "
                    "Flickr8k: Images/ and captions.txt)"]
    token = root / "Flickr8k.token.txt"
    token.write_text("\n".join(tokens) + "\n")
    shutil.copytree(root / "Images", tmp_path / "another-copy" / "Images")  # under the folder above: its own Images/ read
    with pytest.raises(DataError, match=r"1 of 7 rows name no image that is there \(first: line 7: its 'image' is "
                                        r"'2258277193_586949ec62\.jpg\.1', not a file"):
        list(HubCaptions(str(token), "image", "caption").records("train", BadRecords(str(token))))
    records = BadRecords(str(token), "skip")
    read = list(HubCaptions(str(token), "image", "caption").records("train", records))
    assert [(name, [c for _, c in texts]) for _, name, _, texts in read] == [
        (f"10{i}_693b08cb0e.jpg", [f"A child {i} in pink 0 .", f"A child {i} in pink 1 ."]) for i in range(3)]
    assert records.counts == {"missing image": 1}


def test_a_sheet_saved_tab_separated_beside_the_photos_is_their_table(tmp_path, monkeypatch):
    # captions.tsv (image<TAB>caption, a spreadsheet's tab-separated save) beside the photos was left out without a word:
    # the folder read as photos without captions, "has no column(s) ['caption']"
    root = tmp_path / "album"
    root.mkdir()
    lines = ["image\tcaption"]
    for index in range(3):
        Image.new("RGB", (32, 32), (70 * index, 40, 40)).save(root / f"img{index}.jpg")
        lines.append(f"img{index}.jpg\ta square, number {index}")
    (root / "captions.tsv").write_text("\n".join(lines) + "\n")
    said: list[str] = []
    monkeypatch.setattr("mmcaption.data.folder_layouts.rank_zero_info", said.append)
    read = list(HubCaptions(str(root), "image", "caption").records("train", BadRecords(str(root))))
    assert [(name, [c for _, c in texts]) for _, name, _, texts in read] == [
        (f"img{i}.jpg", [f"a square, number {i}"]) for i in range(3)]
    assert said == [f"{root} holds photos and one table of them, captions.tsv: the table is read (its image paths relative "
                    f"to {root}, or to the table's folder)"]
    (root / "captions.tsv").write_text("".join(f"img{i}.jpg\ta square\n" for i in range(3)))  # no header: which column?
    with pytest.raises(DataError, match=r"captions\.tsv: a \.tsv without a header line .* give it a header line naming its "
                                        r"columns \(image<TAB>caption\)"):
        HubCaptions(str(root), "image", "caption")


@pytest.mark.parametrize("suffix", [".tsv", ".txt"])
def test_a_folders_train_and_test_sheets_saved_tab_separated_are_its_splits_read_as_text(tmp_path, suffix):
    # train.tsv and test.tsv beside the photos were left to datasets, which typed each file's columns by its rows: a
    # caption column of "NA" and "2020" became numbers, and the other file's "café au lait" stopped the run
    # ("Failed to parse string ... as a scalar of type double"); a test.tsv saved in Windows-1252 was "Invalid UTF8".
    # As .txt (Excel's "Text (Tab delimited)"), datasets read them as lines of text: "its columns are ['text']", and the
    # hint was to read each line as a caption
    root = tmp_path / "album"
    root.mkdir()
    for index in range(4):
        Image.new("RGB", (32, 32), (60 * index, 40, 40)).save(root / f"img{index}.jpg")
    (root / f"train{suffix}").write_text("image\tcaption\nimg0.jpg\tNA\nimg1.jpg\t2020\n")
    (root / f"test{suffix}").write_text("image\tcaption\nimg2.jpg\tcafé au lait\nimg3.jpg\tNone\n", encoding="cp1252")
    with pytest.warns(UserWarning, match=rf"test\{suffix} is not UTF-8: read as Windows-1252"):
        hub = HubCaptions(str(root), "image", "caption")
        assert hub.stage_splits(None, None, None) == {"train": "train", "val": "test", "test": "test"}
        read = {split: [(name, [c for _, c in texts]) for _, name, _, texts in hub.records(split, BadRecords(str(root)))]
                for split in ("train", "test")}
    assert read == {"train": [("img0.jpg", ["NA"]), ("img1.jpg", ["2020"])],
                    "test": [("img2.jpg", ["café au lait"]), ("img3.jpg", ["None"])]}
    # a split in two sheets: a bad row is named by its sheet and line, as for CSVs (was "row 3 (key 3)")
    for name in (f"train{suffix}", f"test{suffix}"):
        (root / name).unlink()
    (root / f"train-00000-of-00002{suffix}").write_text("image\tcaption\nimg0.jpg\ta\nimg1.jpg\tb\n")
    (root / f"train-00001-of-00002{suffix}").write_text("image\tcaption\nimg2.jpg\tc\nimg9.jpg\td\n")
    with pytest.raises(DataError, match=rf"train-00001-of-00002\{suffix}, line 3: its 'image' is 'img9\.jpg'"):
        list(HubCaptions(str(root), "image", "caption").records("train", BadRecords(str(root))))


def test_llava_pretrains_captions_read_as_captions_with_its_images_unpacked_beside_it(tmp_path, monkeypatch):
    # blip_laion_cc_sbu_558k.json (LLaVA's stage-1 captions: a request and the caption as a conversation) with its
    # images.zip unpacked into images/: the conversations column was "objects ... e.g. conversations.from" (which would
    # train "human" and "gpt" as captions), and every row's 00000/000000.jpg "not a file" (they are in images/00000/)
    root = tmp_path / "LLaVA-Pretrain"
    (root / "images" / "00000").mkdir(parents=True)
    records = []
    for index in range(3):
        Image.new("RGB", (32, 32), (70 * index, 40, 40)).save(root / "images" / "00000" / f"00000{index}.jpg")
        records.append({"id": f"00000{index}", "image": f"00000/00000{index}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
            {"from": "gpt", "value": f"a red square number {index}"}]})
    file = root / "blip_laion_cc_sbu_558k.json"
    file.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"its columns by their names: --data\.init_args\.hub_image_column image "
                                        r"--data\.init_args\.hub_caption_column conversations$"):
        list(HubCaptions(str(file)).records("train", BadRecords(str(file))))
    said: list[str] = []
    monkeypatch.setattr("mmcaption.data.hub_images.rank_zero_info", said.append)
    hub = HubCaptions(str(file), "image", "conversations")
    read = sorted((name, [c for _, c in texts]) for split in ("train.rest", "train.heldout")
                  for _, name, _, texts in hub.records(split, BadRecords(str(file))))
    assert read == [(f"00000/00000{i}.jpg", [f"a red square number {i}"]) for i in range(3)]
    assert said == [f"{file}: its rows name images by paths that are not from its folder but from {root / 'images'}: each "
                    f"is read from there (first: '00000/000000.jpg' is {root / 'images' / '00000' / '000000.jpg'})"]
    # an instruct file's conversations (questions and their answers) are no captions: refused, named the instruct stage's
    records[0]["conversations"] += [{"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": "Red."}]
    file.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"its 'conversations' holds conversations of 4 turns, questions and their answers, "
                                        r"not captions: train it as the instruct stage \(configs/instruct\.yaml"):
        list(HubCaptions(str(file), "image", "conversations").records("train", BadRecords(str(file))))
    # the folder as downloaded, given whole: its _meta.json beside it (id, image, blip_caption, url) was read as rows of
    # the same split, a CastError naming neither file; and the cache the instruct stage keeps beside its file
    # (preprocessed/: its image hashes, a JSON file) was read as a table of captions, refused as a CastError too
    records[0]["conversations"] = records[0]["conversations"][:2]
    file.write_text(json.dumps(records))
    (root / "blip_laion_cc_sbu_558k_meta.json").write_text(json.dumps(
        [{"id": r["id"], "image": r["image"], "blip_caption": "a square", "url": "http://x/0.jpg"} for r in records]))
    cache = root / "preprocessed"
    (cache / "image-hashes").mkdir(parents=True)
    (cache / "image-hashes" / "01b05fbb5fd30dac.json").write_text(json.dumps({"00000/000000.jpg": [1, 2, 3, "ab"]}))
    (cache / "train-fb19905bde078b2b").mkdir()
    (cache / "train-fb19905bde078b2b" / "meta.json").write_text("{}")
    with pytest.raises(DataError, match=r"its tables are read as the rows of one dataset, and their columns differ "
                                        r"\(blip_laion_cc_sbu_558k\.json: conversations, id, image; "
                                        r"blip_laion_cc_sbu_558k_meta\.json: blip_caption, id, image, url\): give the one to "
                                        r"read as hub_dataset \(its file\), or move the others out$"):
        list(HubCaptions(str(root), "image", "conversations").records("train", BadRecords(str(root))))
    (root / "blip_laion_cc_sbu_558k_meta.json").unlink()
    hub = HubCaptions(str(root), "image", "conversations")
    assert sorted((name, [c for _, c in texts]) for split in ("train.rest", "train.heldout")
                  for _, name, _, texts in hub.records(split, BadRecords(str(root)))) == read


def test_flickrs_own_flickr8k_download_reads_its_token_file_its_photos_beside_it_and_its_split_lists(backbones, tmp_path,
                                                                                                      monkeypatch):
    # Flickr8k_Dataset.zip and Flickr8k_text.zip unpacked side by side: the folder was read as an image folder without
    # captions; Flickr8k_text/ as a folder of text; the token file refused every row (its photos in Flicker8k_Dataset/,
    # beside its folder), asked for columns it has no header to name, and held out 1% by hash where the download's
    # Flickr_8k.trainImages.txt, devImages and testImages give the splits papers use
    root = tmp_path / "flickr8k"
    photos, text = root / "Flicker8k_Dataset", root / "Flickr8k_text"  # (sic: Flickr's own spelling of the folder)
    photos.mkdir(parents=True)
    text.mkdir()
    names = [f"10{index}_693b08cb0e.jpg" for index in range(6)]
    tokens, lemmas = [], []
    for index, name in enumerate(names):
        Image.new("RGB", (32, 32), (40 * index, 40, 40)).save(photos / name)
        tokens += [f"{name}#{k}\tA child {index} in pink {k} ." for k in range(2)]
        lemmas += [f"{name}#{k}\ta child {index} in pink {k} ." for k in range(2)]
    tokens.append("2258277193_586949ec62.jpg.1#0\tA photo that Flickr8k lists and does not hold .")  # as the real file has
    (text / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    (text / "Flickr8k.lemma.token.txt").write_text("\n".join(lemmas) + "\n")
    for split, listed in (("train", names[:3]), ("dev", names[3:5]), ("test", names[5:])):
        (text / f"Flickr_8k.{split}Images.txt").write_text("\n".join(listed) + "\n")
    (text / "readme.txt").write_text("Flickr8k: 8,092 images, five captions each.\n")
    said: list[str] = []
    monkeypatch.setattr("mmcaption.data.tables.rank_zero_info", said.append)
    for dataset in (root, text, text / "Flickr8k.token.txt"):
        hub = HubCaptions(str(dataset))  # the columns as the settings' defaults name them (jpg, txt)
        assert hub.split_names() == ["train", "dev", "test", "unlisted"], dataset
        assert hub.stage_splits(None, None, None)["val"] == "dev"
        for split, listed in (("train", names[:3]), ("dev", names[3:5])):
            read = list(hub.records(split, BadRecords(str(dataset))))
            assert [(Path(path).name, [c for _, c in texts]) for _, path, _, texts in read] == [
                (name, [f"A child {names.index(name)} in pink {k} ." for k in range(2)]) for name in listed]  # not lemmas
    assert said == [f"note: {text / 'Flickr8k.token.txt'}: 1 of its photos are in none of its split lists (Flickr_8k.devImages.txt, "
                    "Flickr_8k.testImages.txt, Flickr_8k.trainImages.txt), so their rows, split 'unlisted', neither train nor "
                    "validate (first: 2258277193_586949ec62.jpg.1)"]
    # an edited split list is another split: the cache follows the lists
    dm = make_datamodule(backbones, tmp_path / "work", source="hub", hub_dataset=str(root))
    before = dm.split_inputs("train")
    (text / "Flickr_8k.devImages.txt").write_text(names[3] + "\n")
    assert dm.split_inputs("train")["split_lists"] != before["split_lists"]


@pytest.mark.parametrize("orient", [None, "split", "table", "index"])
def test_a_caption_table_pandas_wrote_to_json_in_any_layout_reads_as_its_rows(tmp_path, orient):
    # DataFrame.to_json("captions.json") writes a column each ({"image": {"0": ...}, "caption": {"0": ...}}): read as one
    # row of whole columns and refused with "name the key of the text in hub_caption_column, e.g. caption.0"; its
    # orient="split" had "no column(s) ['caption', 'image']; its columns are ['columns', 'index', 'data']", "index" ['0', '1', '2']
    import pandas as pd

    names = []
    for index in range(3):
        names.append(f"photo{index}.jpg")
        Image.new("RGB", (32, 32), (70 * index, 40, 40)).save(tmp_path / names[-1])
    frame = pd.DataFrame({"image": names, "caption": [f"A red square {i}." for i in range(3)]})
    table = tmp_path / "captions.json"
    frame.to_json(table, **({"orient": orient} if orient else {}))
    read = list(HubCaptions(str(table), "image", "caption").records("train", BadRecords(str(table))))
    assert [(name, [c for _, c in texts]) for _, name, _, texts in read] == [
        (name, [f"A red square {i}."]) for i, name in enumerate(names)]


def test_a_coco_captions_file_given_as_a_table_is_told_how_it_reads(tmp_path):
    # nocaps' COCO-format file as hub_dataset was told "--data.init_args.hub_image_column images", which cannot work
    nocaps = tmp_path / "nocaps_val_4500_captions.json"
    nocaps.write_text(json.dumps({"licenses": [], "info": {}, "images": [{"id": 0, "file_name": "0013ea2087020901.jpg"}],
                                  "annotations": [{"image_id": 0, "id": 0, "caption": "A man on a horse."}]}))
    with pytest.raises(DataError, match=r"it is a COCO captions file: source coco reads it where it is, its images in a "
                                        r"folder beside it or in data_dir, as a split given by its path \(--data.init_args."
                                        r"source coco --data.init_args.test_split <file>") as refused:
        list(HubCaptions(str(nocaps), "jpg", "txt").records("train", BadRecords(str(nocaps))))
    assert "hub_image_column images" not in str(refused.value)


def textcaps_layout(root: Path, coco_root: Path) -> dict[str, list[str]]:
    """TextCaps as downloaded: ``TextCaps_0.1_<split>.json`` (its rows in a ``data`` list, a caption each, with the
    image's references; the test file's without captions), its photos in TextVQA's ``train_images/`` (train and val)
    and ``test_images/``, named in the rows as ``train/<id>.jpg``; returns each split's image ids."""
    (root / "train_images").mkdir(parents=True)
    (root / "test_images").mkdir()
    ids = {}
    for split, source, count, folder in (("train", "train2017", 8, "train"), ("val", "val2017", 3, "train"),
                                         ("test", "val2017", 2, "test")):
        content = json.loads((coco_root / "annotations" / f"captions_{source}.json").read_text())
        rows, ids[split] = [], []
        for n, image in enumerate(content["images"][:count]):
            image_id = f"{split}{n:03d}e629fb9ae7b"
            ids[split].append(image_id)
            shutil.copy(coco_root / source / image["file_name"], root / f"{folder}_images" / f"{image_id}.jpg")
            row = {"image_id": image_id, "image_classes": ["Poster"], "flickr_original_url": "https://farm.staticflickr.com/x.jpg",
                   "image_width": 64, "image_height": 64, "set_name": split, "image_name": image_id,
                   "image_path": f"{folder}/{image_id}.jpg"}
            references = [a["caption"] for a in content["annotations"] if a["image_id"] == image["id"]]
            rows += [{**row, "caption_id": len(rows), "caption_str": caption, "caption_tokens": caption.lower().split(),
                      "reference_strs": references, "reference_tokens": [r.lower().split() for r in references]}
                     for caption in references] if split != "test" else [row]
        (root / f"TextCaps_0.1_{split}.json").write_text(json.dumps(
            {"dataset_type": split, "dataset_name": "textcaps", "dataset_version": "0.1", "data": rows}))
    return ids


def test_textcaps_files_read_as_downloaded_with_textvqas_photo_folders(backbones, coco_root, tmp_path, monkeypatch, capsys):
    # TextCaps' files (rows in a 'data' list) were refused with a command to write them out as JSON Lines; its rows name
    # train/<id>.jpg where TextVQA's download, which holds its photos, unpacks train_images/; its val file given alone
    # was a training set with a 1% share held out to score (or, under 1 MiB, "one object" left out of its folder)
    ids = textcaps_layout(tmp_path / "TextCaps", coco_root)
    val = tmp_path / "TextCaps" / "TextCaps_0.1_val.json"
    settings = dict(source="hub", train_split=None, val_split=None, cache_dir=str(tmp_path / "cache"))
    scored = make_datamodule(backbones, tmp_path / "unused", hub_dataset=str(val), **settings)
    assert scored.stage_splits() == {"val": "val", "test": "val"}  # its set_name: scored whole, as its server scores it
    scored.check_inputs("test")
    folder = scored.preprocess("val")
    assert [row["file_name"] for row in load_table(folder / "images")] == [f"train/{i}.jpg" for i in ids["val"]]
    references = {row["caption"] for row in datasets.load_from_disk(str(folder / "captions"))}
    content = json.loads(val.read_text())["data"]
    assert references == {row["caption_str"] for row in content} and len(references) == 15  # 5 each, every row's
    with pytest.raises(DataError, match=r"TextCaps_0\.1_val\.json has splits \['val'\], none to train on: set train_split to it"):
        scored.check_inputs("fit")
    # the folder as downloaded, TextVQA's own file beside them (its photos' download holds it): TextCaps' three files its
    # splits, trained on train, validated on val (TextVQA's was paired with TextCaps' train, and datasets refused a cast)
    (tmp_path / "TextCaps" / "TextVQA_0.5.1_train.json").write_text(json.dumps(
        {"dataset_name": "textvqa", "dataset_type": "train", "dataset_version": "0.5.1", "data": [
            {"question": "what does the sign say?", "image_id": ids["train"][0], "image_classes": ["Sign"], "question_id": 0,
             "set_name": "train", "answers": ["stop"] * 10, "flickr_original_url": "https://x"}]}))
    infos = []
    monkeypatch.setattr("mmcaption.data.hub.rank_zero_info", infos.append)
    whole = make_datamodule(backbones, tmp_path / "unused", hub_dataset=str(tmp_path / "TextCaps"), **settings)
    assert any("TextVQA_0.5.1_train.json beside TextCaps' files left out" in line for line in infos), infos
    assert whole.stage_splits()["train"] == "train" and whole.stage_splits()["val"] == "validation"
    trained = load_table(whole.preprocess("train") / "images")
    assert sorted(row["file_name"] for row in trained) == sorted(f"train/{i}.jpg" for i in ids["train"])
    assert len(load_table(whole.preprocess("validation") / "images")) == 3
    with pytest.raises(DataError, match=r"none of its 2 images has a caption \(a benchmark's test split keeps its references"):
        whole.preprocess("test")  # its test file: captions held back for its server
    # mmcaption prepare on the folder: it was refused at its test split once the two others were done; that split is now
    # said as not prepared, the others summed up
    from mmcaption.data.summary import prepare_splits

    capsys.readouterr()
    assert prepare_splits(whole, str(backbones[0])) == 0
    said = capsys.readouterr().out
    assert said.count("\n  kept ") == 2 and re.search(r"^split test: not prepared: .*none of its 2 images has a caption", said, re.M)


def lmms_lab_nocaps(root, coco_root, splits: dict[str, bool]) -> None:
    """lmms-eval's copy of nocaps (``lmms-lab/NoCaps``) as ``hf download`` writes it: ``data/<split>-00000-of-00001.parquet``
    with its columns (the photo, ``image_id``, ``image_file_name``, ``image_open_images_id``, ..., ``annotations_captions``
    a list of captions; the test split's held back: empty lists), no split to train on."""
    import datasets

    content = json.loads((coco_root / "annotations" / "captions_val2017.json").read_text())
    features = datasets.Features({"image": datasets.Image(), "image_file_name": datasets.Value("string"),
                                  "image_id": datasets.Value("int32"), "image_open_images_id": datasets.Value("string"),
                                  "annotations_ids": datasets.Sequence(datasets.Value("int32")),
                                  "annotations_captions": datasets.Sequence(datasets.Value("string"))})
    (root / "data").mkdir(parents=True)
    for split, captioned in splits.items():
        rows = []
        for n, image in enumerate(content["images"]):
            captions = [a["caption"] for a in content["annotations"] if a["image_id"] == image["id"]] if captioned else []
            rows.append({"image": {"bytes": (coco_root / "val2017" / image["file_name"]).read_bytes(), "path": None},
                         "image_file_name": f"{n:04x}ea2087020901.jpg", "image_id": 3 * n, "image_open_images_id": f"{n:04x}ea",
                         "annotations_ids": list(range(len(captions))), "annotations_captions": captions})
        datasets.Dataset.from_list(rows, features=features).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")


def test_an_evaluation_sets_hub_copy_is_scored_whole_and_not_trained_on(backbones, coco_root, tmp_path):
    # lmms-eval's copies (nocaps' validation and its held-back test, Flickr30k's test alone) have no split to train on:
    # test scored a 1% share of nocaps' validation split held out as if to validate a training run on the rest (with its
    # validation and test splits both there, every stage was refused for want of a 'train' split); and its caption column
    # was not named in the refusal
    lmms_lab_nocaps(tmp_path / "NoCaps", coco_root, {"validation": True})
    settings = dict(source="hub", hub_dataset=str(tmp_path / "NoCaps"), train_split=None, val_split=None,
                    cache_dir=str(tmp_path / "cache"))
    unnamed = make_datamodule(backbones, tmp_path / "unused", **settings)
    with pytest.raises(DataError, match=r"its columns by their names: --data.init_args.hub_image_column image "
                                        r"--data.init_args.hub_caption_column annotations_captions"):
        unnamed.preprocess(unnamed.stage_splits()["test"])
    settings.update(hub_image_column="image", hub_caption_column="annotations_captions")
    nocaps = make_datamodule(backbones, tmp_path / "unused", **settings)
    assert nocaps.stage_splits() == {"val": "validation", "test": "validation"}
    nocaps.check_inputs("test")
    images = load_table(nocaps.preprocess("validation") / "images")
    assert sorted(images["image_id"]) == [0, 3, 6, 9]  # every image, under its own id
    with pytest.raises(DataError, match=r"NoCaps has splits \['validation'\], none to train on: set train_split to it \(hub_val_fraction"):
        nocaps.check_inputs("fit")
    # given with a COCO config's split names (train2017, val2017), it is tested; each stage that reads one is refused
    coco_names = make_datamodule(backbones, tmp_path / "unused", **{**settings, "train_split": "train2017", "val_split": "val2017"})
    assert coco_names.stage_splits()["test"] == "validation"
    coco_names.check_inputs("test")
    for stage, name in (("validate", "val2017"), ("fit", "train2017")):
        with pytest.raises(DataError, match=rf"NoCaps has splits \['validation'\], not '{name}' \(set train_split / val_split"):
            coco_names.check_inputs(stage)
    # asked to, it trains on it, a share held out to validate on, as for any single split
    asked = make_datamodule(backbones, tmp_path / "unused", **{**settings, "train_split": "validation"})
    assert asked.stage_splits() == {"train": "validation.rest", "val": "validation.heldout", "test": "validation.heldout"}
    # its test split's captions held back for its server: validation is scored, not the test split
    shutil.rmtree(tmp_path / "NoCaps")
    lmms_lab_nocaps(tmp_path / "NoCaps", coco_root, {"validation": True, "test": False})
    both = make_datamodule(backbones, tmp_path / "unused", **settings)
    assert both.stage_splits() == {"val": "validation", "test": "validation"}
    assert make_datamodule(backbones, tmp_path / "unused", **{**settings, "test_split": "test"}).stage_splits() == {
        "val": "validation", "test": "test"}  # its test split asked for: validation stays where it was
    with pytest.raises(DataError, match=r"none to train on: set train_split and val_split both to one \('validation': "
                                        r"hub_val_fraction of it is then held out for validation\), or val_split to another"):
        both.check_inputs("fit")
    # Flickr30k's copy, its one split 'test': scored whole; a dataset's one split 'train' still gives a share to validate on
    for name, expected in (("test", {"val": "test", "test": "test"}),
                           ("train", {"train": "train.rest", "val": "train.heldout", "test": "train.heldout"})):
        shutil.rmtree(tmp_path / "NoCaps")
        lmms_lab_nocaps(tmp_path / "NoCaps", coco_root, {name: True})
        assert make_datamodule(backbones, tmp_path / "unused", **settings).stage_splits() == expected
    # a checkpoint that trained on all but a share of Flickr30k's one split (before such sets were scored whole): scoring
    # all of it scores images it trained on, said
    shutil.rmtree(tmp_path / "NoCaps")
    lmms_lab_nocaps(tmp_path / "NoCaps", coco_root, {"test": True})
    trainer = SimpleNamespace(datamodule=make_datamodule(backbones, tmp_path / "unused", **settings), state=SimpleNamespace(fn="test"))
    with pytest.warns(UserWarning, match=r"the checkpoint trained on 'test' but for a heldout share \(test\.rest-0123abcd\), "
                                         r"and all of 'test' is scored, images it trained on: give train_split test"):
        scored_where_trained(trainer, {"train_split": "test.rest-0123abcd"})


def vizwiz_layout(root, coco_root) -> Path:
    """VizWiz-Captions as its download unpacks: ``annotations/val.json`` (images with ``file_name``, ``vizwiz_url``, ``id``,
    ``text_detected``; annotations with ``is_precanned`` and ``is_rejected`` besides COCO's fields), ``annotations/test.json``
    (images only: its captions are held back for its server), the photos in ``val/`` and ``test/``."""
    content = json.loads((coco_root / "annotations" / "captions_val2017.json").read_text())
    for folder in ("annotations", "val", "test"):
        (root / folder).mkdir(parents=True)
    images, annotations, tests = [], [], []
    for n, image in enumerate(content["images"]):
        for split, first, listed in (("val", 23431, images), ("test", 31181, tests)):
            shutil.copy(coco_root / "val2017" / image["file_name"], root / split / f"VizWiz_{split}_{n:08d}.jpg")
            listed.append({"file_name": f"VizWiz_{split}_{n:08d}.jpg", "vizwiz_url": "", "id": first + n, "text_detected": False})
        for k, annotation in enumerate(a for a in content["annotations"] if a["image_id"] == image["id"]):
            stock = n == 0 and k < 2  # two workers found the first photo too poor to describe
            annotations.append({"caption": "Quality issues are too severe to recognize visual content." if stock else
                                annotation["caption"], "image_id": 23431 + n, "is_precanned": stock,
                                "is_rejected": n == 1 and k == 0, "id": 117155 + len(annotations), "text_detected": False})
    (root / "annotations" / "val.json").write_text(json.dumps({"info": {"version": "VizWiz-Captions 1.0"}, "images": images,
                                                               "annotations": annotations}))
    (root / "annotations" / "test.json").write_text(json.dumps({"info": {"version": "VizWiz-Captions 1.0"}, "images": tests}))
    return root / "annotations" / "val.json"


def test_vizwizs_rejected_and_precanned_captions_are_left_out_as_its_evaluation_leaves_them(backbones, coco_root, tmp_path):
    # VizWiz-Captions marks a caption a reviewer rejected (is_rejected) and its stock one for a photo too poor to describe
    # (is_precanned: "Quality issues are too severe to recognize visual content."); its evaluation leaves them out (its API
    # called with ignore_rejected and ignore_precanned), and so do its users' training runs: read as captions, they were
    # trained on and were references that the split's scores were computed against
    val = vizwiz_layout(tmp_path / "vizwiz", coco_root)
    dm = make_datamodule(backbones, coco_root, test_split=str(val), cache_dir=str(tmp_path / "cache"))
    dm.check_inputs("test")
    with pytest.warns(UserWarning, match=r"val\.json: 3 x captions marked is_rejected or is_precanned \(VizWiz-Captions'\) "
                                         r"left out, as VizWiz's evaluation leaves them \(first: annotation id 117155 \(image id 23431\)\)"):
        folder = dm.preprocess("val")
    captions = datasets.load_from_disk(str(folder / "captions"))["caption"]
    assert len(captions) == 17 and not any(caption.startswith("Quality issues") for caption in captions)
    assert len(load_table(folder / "images")) == 4  # every photo still there, with the captions it has
    assert "captions marked rejected or precanned left out" in dm.split_inputs("val")["captions"]  # (an earlier cache: anew)
    # a file without those marks is read as before, its cache kept
    assert "captions" not in make_datamodule(backbones, coco_root).split_inputs("val2017")


def test_vizwiz_vqas_questions_find_their_photos_in_the_folder_beside_its_annotations(backbones, coco_root, tmp_path, monkeypatch):
    # VizWiz-VQA unpacks as Annotations/val.json (a list of {"image", "question", "answers": [{"answer",
    # "answer_confidence"}, x10], "answer_type", "answerable"}) beside val/ with the photos: they were looked for in
    # Annotations/ and the run refused until --data.image_root named val/
    from mmcaption.data import QuestionsPredictDataModule

    (tmp_path / "vizwiz" / "Annotations").mkdir(parents=True)
    (tmp_path / "vizwiz" / "val").mkdir()
    (tmp_path / "vizwiz" / "train").mkdir()  # another split's photos, which hold none of these
    records = []
    for n, photo in enumerate(sorted((coco_root / "val2017").iterdir())):
        shutil.copy(photo, tmp_path / "vizwiz" / "val" / f"VizWiz_val_{n:08d}.jpg")
        answers = ["white"] * 7 + ["unanswerable", "grey", "white"] if n else ["unanswerable"] * 10
        records.append({"image": f"VizWiz_val_{n:08d}.jpg", "question": "What color is this?", "answerable": int(bool(n)),
                        "answers": [{"answer": answer, "answer_confidence": "yes"} for answer in answers],
                        "answer_type": "other" if n else "unanswerable"})
    (tmp_path / "vizwiz" / "Annotations" / "val.json").write_text(json.dumps(records))
    infos = []
    monkeypatch.setattr("mmcaption.data.image_sources.rank_zero_info", infos.append)
    data = QuestionsPredictDataModule(questions_file=str(tmp_path / "vizwiz" / "Annotations" / "val.json"),
                                      tokenizer=str(backbones[0]), image_processor=str(backbones[1]))
    data.setup("predict")
    assert data.dataset.image_paths == [tmp_path / "vizwiz" / "val" / f"VizWiz_val_{n:08d}.jpg" for n in range(len(records))]
    assert data.dataset[1]["error"] is None
    assert any(f"its images are read from {tmp_path / 'vizwiz' / 'val'}, a folder beside it that holds them" in i for i in infos)
    # another folder beside it holding photos of those names (its test split's, numbered alike): the one named as the
    # file is read; a file named otherwise reads neither, the refusal naming both (another split's photos would be asked)
    shutil.copytree(tmp_path / "vizwiz" / "val", tmp_path / "vizwiz" / "test")
    data = QuestionsPredictDataModule(questions_file=str(tmp_path / "vizwiz" / "Annotations" / "val.json"),
                                      tokenizer=str(backbones[0]), image_processor=str(backbones[1]))
    data.setup("predict")
    assert data.dataset.image_paths[0] == tmp_path / "vizwiz" / "val" / "VizWiz_val_00000000.jpg"
    shutil.copy(tmp_path / "vizwiz" / "Annotations" / "val.json", tmp_path / "vizwiz" / "Annotations" / "mine.json")
    with pytest.raises(DataError, match=r"vizwiz/test, \S+vizwiz/val beside it each hold them: give the one as --data.image_root"):
        QuestionsPredictDataModule(questions_file=str(tmp_path / "vizwiz" / "Annotations" / "mine.json"),
                                   tokenizer=str(backbones[0]), image_processor=str(backbones[1])).setup("predict")
