"""One image loader for training, predict and the Python API: phone photos upright, 16-bit scaled."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmcaption.data import CaptionDataModule, CaptionPredictDataModule
from mmcaption.images import load_rgb
from mmcaption.inference import Captioner

ORIENTATION = 0x0112  # EXIF tag


def upright_picture(width: int, height: int) -> Image.Image:
    """Left half red, right half blue, a green band across the top: a rotation or a squash shows at once."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = (220, 20, 20)
    array[:, width // 2:] = (20, 20, 220)
    array[: height // 4] = (20, 200, 20)
    return Image.fromarray(array)


def save_as_a_phone_does(picture: Image.Image, path) -> None:
    """The sensor's pixels sideways and EXIF orientation 6 ("rotate 90 degrees clockwise to view")."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    picture.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)


def is_upright(image: Image.Image) -> bool:
    array = np.asarray(image).astype(int)
    height, width = array.shape[:2]
    left, right = array[height // 2, width // 8], array[height // 2, 7 * width // 8]
    return left[0] > 150 > left[2] and right[2] > 150 > right[0]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "coco" / "train2017"
    folder.mkdir(parents=True)
    save_as_a_phone_does(upright_picture(48, 64), folder / "phone_small.jpg")  # at most the model's size: stored as is
    save_as_a_phone_does(upright_picture(480, 640), folder / "phone_large.jpg")  # shrunk at preprocessing
    deep = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(deep).save(folder / "scan_16bit.png")  # a 16-bit grayscale PNG
    names = ["phone_small.jpg", "phone_large.jpg", "scan_16bit.png"]
    annotations = {
        "images": [{"id": i + 1, "file_name": name} for i, name in enumerate(names)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "caption": "a picture"} for i in range(len(names))],
    }
    (tmp_path / "coco" / "annotations").mkdir()
    (tmp_path / "coco" / "annotations" / "captions_train2017.json").write_text(json.dumps(annotations))
    return folder, names


def test_the_loader_applies_exif_orientation_and_scales_16_bit(photos):
    folder, _ = photos
    assert not is_upright(Image.open(folder / "phone_small.jpg").convert("RGB"))  # as stored: sideways
    for source in (folder / "phone_small.jpg", (folder / "phone_large.jpg").read_bytes(), Image.open(folder / "phone_small.jpg")):
        assert is_upright(load_rgb(source))
    scan = np.asarray(load_rgb(folder / "scan_16bit.png"))
    assert scan.dtype == np.uint8 and scan.min() == 0 and scan.max() == 255 and 100 < scan.mean() < 155  # scaled, not clipped
    assert is_upright(load_rgb(np.asarray(upright_picture(32, 32)))) and is_upright(load_rgb(np.asarray(upright_picture(32, 32)) / 255.0))
    deep_array = np.asarray(load_rgb(deep := np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)))
    assert deep_array.max() == 255 and np.array_equal(deep_array, np.asarray(load_rgb(Image.fromarray(deep))))  # arrays scale too

    # a large phone photo is shrunk upright: its proportions kept (480 x 640 upright -> 64 x 85)
    from mmcaption.images import shrink_image

    shrunk = Image.open(io.BytesIO(shrink_image((folder / "phone_large.jpg").read_bytes(), 64)))
    assert shrunk.size == (64, 85) and is_upright(shrunk)


def with_garbled_exif(picture: Image.Image) -> bytes:
    """A phone's JPEG (orientation 6) whose camera wrote its model's name under WhitePoint (0x013E), a tag of numbers:
    Pillow reads it, and its exif_transpose raised a TypeError writing the EXIF back."""
    exif = Image.Exif()
    exif[ORIENTATION], exif[0x0110] = 6, "iPhone"  # 0x0110: Model
    out = io.BytesIO()
    picture.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", exif=exif.tobytes(), quality=95)
    data = out.getvalue()
    order = "little" if data.find(b"II*\x00") >= 0 else "big"
    at = data.find((0x0110).to_bytes(2, order), data.find(b"II*\x00" if order == "little" else b"MM\x00*"))
    return data[:at] + (0x013E).to_bytes(2, order) + data[at + 2:]


def test_a_photo_whose_exif_pillow_cannot_write_back_is_read_upright(tmp_path, monkeypatch):
    from mmcaption.images import check_image, shrink_image

    small, large = with_garbled_exif(upright_picture(48, 64)), with_garbled_exif(upright_picture(480, 640))
    assert check_image(small) is None  # the image pass let it through; then training stopped on it with a bare TypeError
    (tmp_path / "phone.jpg").write_bytes(small)
    for source in (small, tmp_path / "phone.jpg", Image.open(tmp_path / "phone.jpg")):
        assert is_upright(load_rgb(source))
    assert is_upright(load_rgb(large, 64)) and is_upright(Image.open(io.BytesIO(shrink_image(large, 64))))

    def unreadable(self):
        raise SyntaxError("not a TIFF IFD")

    monkeypatch.setattr(Image.Image, "getexif", unreadable)  # an EXIF no parser of Pillow's reads: the pixels as stored
    with pytest.warns(UserWarning, match=r"phone\.jpg: its EXIF cannot be read \(SyntaxError: not a TIFF IFD\)"):
        as_stored = load_rgb(tmp_path / "phone.jpg")
    assert as_stored.size == (64, 48) and not is_upright(as_stored)


def test_scientific_images_are_scaled_from_the_range_their_values_use(tmp_path):
    # a 12-bit microscope's image in a 16-bit file was divided by 65535: 16 grey levels, near black, to training and
    # predict alike; a float TIFF of reflectance just above 1 was black, and a height map in metres flat white
    cell = np.zeros((32, 32), dtype=np.uint16)
    cell[:, :16] = 4000  # a bright cell on the left, on a 12-bit camera's dark background
    cell[:, 16:] = 100
    Image.fromarray(cell).save(tmp_path / "micro12bit.png")
    Image.fromarray(cell).save(tmp_path / "micro12bit.tif")
    # ImageJ's and scientific cameras' big-endian TIFF ("MM"): Pillow's getextrema refuses its mode, and it was refused
    Image.frombytes("I;16B", (32, 32), cell.astype(">u2").tobytes()).save(tmp_path / "micro12bit_be.tif")
    assert Image.open(tmp_path / "micro12bit_be.tif").mode == "I;16B"
    for name in ("micro12bit.png", "micro12bit.tif", "micro12bit_be.tif"):
        seen = np.asarray(load_rgb(tmp_path / name))
        assert seen[0, 0, 0] == round(4000 * 255 / 4095) and seen[0, 31, 0] == round(100 * 255 / 4095), name
    labels = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint16)  # a 16-bit file of 0-255 values: was black
    Image.fromarray(labels).save(tmp_path / "labels16.png")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "labels16.png"))[..., 0], labels)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "labels16.png")), np.asarray(load_rgb(labels)))  # file = array
    full = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)  # the whole 16-bit range: as before
    assert np.asarray(load_rgb(full)).max() == 255 and np.asarray(load_rgb(full)).min() == 0

    reflectance = np.linspace(0, 1.05, 32 * 32, dtype=np.float32).reshape(32, 32)  # clouds, glint: a little above 1
    Image.fromarray(reflectance, mode="F").save(tmp_path / "refl.tif")
    from_file = np.asarray(load_rgb(tmp_path / "refl.tif"))
    assert np.array_equal(from_file, np.asarray(load_rgb(reflectance))) and from_file.max() == 255 and 100 < from_file.mean() < 140
    height = np.linspace(0, 4000, 32 * 32, dtype=np.float32).reshape(32, 32)  # metres
    Image.fromarray(height, mode="F").save(tmp_path / "dem.tif")
    terrain = np.asarray(load_rgb(tmp_path / "dem.tif"))[..., 0]
    assert terrain.max() == 255 and 120 < terrain.mean() < 135 and len(np.unique(terrain)) > 200  # was 255 above 255 m
    # made smaller for the model (predict, the API) as at full size (training's preprocessing): a block's mean under a
    # bit depth's boundary picked another depth, and predict saw the picture 4 times brighter than training had
    speckled = np.full((2000, 2000), 500, dtype=np.uint16)
    speckled[::7, ::7], speckled[0, 0] = 1000, 1100
    Image.fromarray(speckled).save(tmp_path / "speckled.png")
    full, small = np.asarray(load_rgb(tmp_path / "speckled.png")), np.asarray(load_rgb(tmp_path / "speckled.png", 224))
    assert small.shape[0] < 1000 and abs(float(full.mean()) - float(small.mean())) < 1.0, (full.mean(), small.mean())
    signed = np.linspace(-500, 1500, 32 * 32).reshape(32, 32).astype(np.int16)  # below zero: from its own range
    Image.fromarray(signed.astype(np.int32), mode="I").save(tmp_path / "signed.tif")
    for source in (tmp_path / "signed.tif", signed):
        seen = np.asarray(load_rgb(source))[..., 0]
        assert seen.min() == 0 and seen.max() == 255, source


def test_training_predict_and_the_api_see_the_same_pixels(backbones, model, photos, tmp_path):
    folder, names = photos
    language_dir, vision_dir = backbones
    train = CaptionDataModule(data_dir=str(folder.parent), train_split="train2017", val_split="train2017",
                              cache_dir=str(tmp_path / "cache"), tokenizer=str(language_dir), image_processor=str(vision_dir),
                              batch_size=3, num_workers=0)
    train.prepare_data()
    train.setup("fit")
    dataset = train.datasets["train2017"]
    by_name = {row["file_name"]: index for index, row in enumerate(dataset.images)}
    training = {name: dataset.__getitems__([i for i, row in enumerate(dataset.rows) if row["image_index"] == by_name[name]][:1])[0]["pixel_values"]
                for name in names}

    predict = CaptionPredictDataModule(images=str(folder), output=str(tmp_path / "out.jsonl"), tokenizer=str(language_dir),
                                       image_processor=str(vision_dir), num_workers=0)
    predict.setup("predict")
    predicted = {predict.dataset.image_paths[i].name: predict.dataset[i]["pixel_values"] for i in range(len(names))}

    captioner = Captioner(model, train.tokenizer, train.image_processor, {"prompts": {}, "generation": {}})
    api = {name: captioner._images([folder / name])[0][0] for name in names}

    for name in ("phone_small.jpg", "scan_16bit.png"):  # stored as they are: identical everywhere
        assert torch.equal(training[name], predicted[name]) and torch.equal(predicted[name], api[name]), name
    # the large photo is re-encoded upright at the model's size for training: the same picture (resized
    # twice, so the red/blue edge is a little softer), not a rotated one
    assert (training["phone_large.jpg"] - api["phone_large.jpg"]).abs().mean() < 0.05
    assert torch.equal(predicted["phone_large.jpg"], api["phone_large.jpg"])
    red_left = api["phone_small.jpg"][0, 32, 4] > 1.0 > api["phone_small.jpg"][2, 32, 4]  # normalised channels
    assert red_left


def test_a_huge_image_reaches_the_model_decoded_and_converted_small():
    # a 200-megapixel photo, or a few hundred KB of PNG at 20000 x 20000, went whole to the processor: 3-6 GB for a model
    # that sees 64 (here) or 224 pixels
    big = io.BytesIO()
    Image.new("L", (12000, 9000), 90).save(big, format="PNG")
    reduced = load_rgb(big.getvalue(), shortest_side=64)
    assert reduced.mode == "RGB" and 128 <= min(reduced.size) < 256 and reduced.size[0] > reduced.size[1]
    photo = io.BytesIO()
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(photo, format="JPEG")
    decoded = load_rgb(photo.getvalue(), shortest_side=224)
    assert 448 <= min(decoded.size) < 896 and abs(decoded.size[0] / decoded.size[1] - 4 / 3) < 0.01
    assert load_rgb(photo.getvalue()).size == (4000, 3000)  # without the model's size: as it is
    small = io.BytesIO()
    Image.new("RGB", (300, 200), (0, 0, 255)).save(small, format="PNG")
    assert load_rgb(small.getvalue(), shortest_side=224).size == (300, 200)  # no larger than twice it: untouched

    # modes Pillow's reduce does not take (a chart's palette PNG, a 1-bit scan, a 16-bit PNG): were refused as undecodable
    for mode in ("P", "1", "I;16"):
        data = io.BytesIO()
        Image.new(mode, (2000, 1600)).save(data, format="PNG")
        assert load_rgb(data.getvalue(), shortest_side=224).mode == "RGB", mode
    # a zip's member, read as bytes though its mode says 'r': was refused as "not binary"
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("red.jpg", photo.getvalue())
    with zipfile.ZipFile(archive) as zipped, zipped.open("red.jpg") as member:
        assert load_rgb(member).size == (4000, 3000)


def test_a_phone_photo_of_over_89_megapixels_brings_no_decompression_bomb_warning(tmp_path):
    import warnings

    from mmcaption.console import warnings_filtered
    from mmcaption.images import opened

    out = io.BytesIO()
    Image.new("L", (12000, 7500)).save(out, "PNG")  # 90 megapixels (a 108 MP phone's photo), within mmcaption's limit
    for quieted in (False, True):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with warnings_filtered() if quieted else contextlib.nullcontext(), opened(out.getvalue()) as image:
                assert image.size == (12000, 7500)  # (quieted: as every mmcaption command runs)
        bombs = [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
        assert len(bombs) == (0 if quieted else 1)  # Pillow's "could be decompression bomb DOS attack"
