"""The built-in vocabularies: each loads, has its dataset's class count, unique names, usable templates."""
import json
from importlib import resources

import pytest

from zoomshot.errors import ZsError
from zoomshot.vocab import builtin_vocabularies, load_vocabulary

EXPECTED_CLASSES = {
    "imagenet1k": 1000,
    "cifar10": 10,
    "cifar100": 100,
    "stl10": 10,
    "food101": 101,
    "pets": 37,
    "flowers102": 102,
    "caltech101": 102,  # clip_benchmark's caltech101 keeps the background class
    "dtd": 47,
    "eurosat": 10,
}
# OpenAI's ImageNet class names (as clip_benchmark ships them) name two pairs of classes alike; the
# built-in list disambiguates them as open_clip does: 744 "projectile, missile", 836 "sunglass".
KNOWN_DUPLICATES: dict = {}


def test_every_expected_vocabulary_is_built_in():
    assert set(EXPECTED_CLASSES) <= set(builtin_vocabularies())


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_builtin_vocabulary_loads_with_expected_classes(name):
    v = load_vocabulary(name)
    assert len(v.classnames) == EXPECTED_CLASSES[name]
    dups = {n: [i for i, m in enumerate(v.classnames) if m == n]
            for n in set(v.classnames) if v.classnames.count(n) > 1}
    assert dups == KNOWN_DUPLICATES.get(name, {})
    assert all(n == n.strip() and n for n in v.classnames)
    assert "_" not in "".join(v.classnames) or name == "imagenet1k"
    assert v.templates and all("{c}" in t or "{}" in t for t in v.templates)
    prompt = v.prompts(v.classnames[0])[0]
    assert v.classnames[0] in prompt and "{" not in prompt


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_builtin_vocabulary_file_records_its_source(name):
    d = json.loads(resources.files("zoomshot").joinpath("vocabularies", f"{name}.json").read_text())
    assert d["name"] == name
    assert isinstance(d["source"], str) and len(d["source"]) > 10


@pytest.mark.parametrize("name", ["food101", "dtd", "cifar100"])
def test_folder_and_meta_ordered_vocabularies_follow_torchvision_label_order(name):
    # torchvision sorts Food-101 and DTD folder names; CIFAR-100's fine labels are alphabetical too.
    names = load_vocabulary(name).classnames
    raw = [n.replace(" ", "_") for n in names]
    assert raw == sorted(raw)


def test_unknown_vocabulary_names_the_choices():
    with pytest.raises(ZsError, match="cifar10"):
        load_vocabulary("cifar1O")
