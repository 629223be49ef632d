"""Property-based fuzzing of the readers of users' files: random mutations of valid COCO and LLaVA
annotations, multiple-choice CSVs and checkpoints are either read or refused with the project's own
error naming the file; never another exception, never a hang.

Each reader gets ``EXAMPLES`` examples of two kinds: byte-level mutations (truncation, flipped and
inserted bytes, deleted ranges: what a broken download or a careless editor makes) and, for JSON,
structural ones (a value replaced by another JSON value of any type, a key deleted, a record
duplicated: what a converter script with a bug makes).
"""

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcaption.checkpoint import CheckpointFileError, load_checkpoint_file, save_atomically
from mmcaption.data.choice_csv import read_choice_csv
from mmcaption.data.coco import read_coco_annotations
from mmcaption.data.llava import read_llava
from mmcaption.data.records import BadRecords, DataError
from mmcaption.demo.synthetic import write_coco_split, write_llava_split

EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                               HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


@st.composite
def byte_mutations(draw, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[at:]
        elif kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


def paths_of(value, path=()):
    """Every (container path, key) in a JSON value."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield path, key
            yield from paths_of(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield path, index
            yield from paths_of(child, (*path, index))


@st.composite
def json_mutations(draw, original: bytes) -> bytes:
    content = json.loads(original)
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths_of(content))
        if not places:
            content = draw(json_values)
            break
        path, key = places[draw(st.integers(0, len(places) - 1))]
        container = content
        for step in path:
            container = container[step]
        kind = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if kind == "replace":
            container[key] = draw(json_values)
        elif kind == "delete":
            del container[key]
        elif isinstance(container, list):
            container.append(json.loads(json.dumps(container[key])))
    return json.dumps(content).encode()


def mutated(original: bytes, is_json: bool):
    return st.one_of(byte_mutations(original), json_mutations(original)) if is_json else byte_mutations(original)


def assert_read_or_refused_by_name(read, path: Path, expected=DataError, result_type=object) -> None:
    try:
        result = read()
    except expected as error:
        assert str(path) in str(error), f"the message does not name the file: {error}"
    else:
        assert isinstance(result, result_type), type(result)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-coco")
    write_coco_split(root, "train2017", 4, seed=0)
    return root


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_coco_annotations(coco, tmp_path, policy):
    original = (coco / "annotations" / "captions_train2017.json").read_bytes()
    target = tmp_path / "captions.json"

    @FUZZ
    @given(data=mutated(original, is_json=True))
    def check(data):
        target.write_bytes(data)
        assert_read_or_refused_by_name(lambda: read_coco_annotations(target, coco / "train2017", BadRecords(target, policy)), target)

    check()


def test_llava_conversations(coco, tmp_path):
    original = write_llava_split(tmp_path / "llava", coco, "train2017", seed=0).read_bytes()
    target = tmp_path / "conversations.json"

    @FUZZ
    @given(data=mutated(original, is_json=True), policy=st.sampled_from(["error", "skip"]))
    def check(data, policy):
        target.write_bytes(data)
        assert_read_or_refused_by_name(lambda: read_llava(target, coco, BadRecords(target, policy)), target)

    check()


def test_multiple_choice_csv(tmp_path):
    rows = ["img_path,Question,A,B,C,D,answer", 'a.png,"What colour, then?",red,blue,green,yellow,B',
            "b.png,How many?,1,2,3,,A", "c.png,Which?,left,right,,,b"]
    original = ("\r\n".join(rows) + "\r\n").encode("utf-8")
    target = tmp_path / "questions.csv"

    @FUZZ
    @given(data=mutated(original, is_json=False))
    def check(data):
        target.write_bytes(data)
        assert_read_or_refused_by_name(lambda: read_choice_csv(target), target)

    check()


def test_checkpoint_file(tmp_path):
    source = tmp_path / "source.ckpt"
    save_atomically({"global_step": 3, "state_dict": {"model.w": torch.arange(6.0).reshape(2, 3)},
                     "hyper_parameters": {"config": {"lora_r": 4}}, "training_data": {"stage": "caption"}}, source)
    original = source.read_bytes()
    target = tmp_path / "mutated.ckpt"

    @FUZZ
    @given(data=byte_mutations(original))
    def check(data):
        target.write_bytes(data)
        assert_read_or_refused_by_name(lambda: load_checkpoint_file(target), target, CheckpointFileError, dict)

    check()
