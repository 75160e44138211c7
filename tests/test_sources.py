"""Image sources: folders, file lists, WebDataset tars, torchvision copies, seeded subsets, decoding."""
import numpy as np
import pytest

from conftest import corrupt_bytes, folder_to_webdataset, image_bytes, make_flat_folder, make_image_folder
from zoomshot.errors import ZsError
from zoomshot.sources import (decode_rgb, expand_braces, list_source, open_source, subset_fraction,
                              webdataset_source)


def test_imagefolder_lists_sorted_relative_ids_with_labels_and_names(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=("dog", "cat"), per_class=2, corrupt={"cat": ["empty"]})
    (root / "dog" / "readme.txt").write_text("ignored: not an image extension")
    src = open_source(str(root))
    assert src.kind == "imagefolder"
    assert src.class_names == ["cat", "dog"]
    assert src.ids == sorted(src.ids) == ["cat/bad_empty.jpg", "cat/cat_000.jpg", "cat/cat_001.png",
                                          "dog/dog_000.jpg", "dog/dog_001.png"]
    assert src.labels.tolist() == [0, 0, 0, 1, 1]
    assert src.read(1) == (root / "cat" / "cat_000.jpg").read_bytes()


def test_flat_folder_has_no_labels_and_mixed_folder_is_refused(tmp_path):
    flat = make_flat_folder(tmp_path / "flat", n=3)
    src = open_source(str(flat))
    assert (src.kind, src.labels, src.class_names) == ("flat", None, None)
    assert src.ids == ["img_000.jpg", "img_001.png", "img_002.jpg"]
    (flat / "sub").mkdir()
    (flat / "sub" / "x.jpg").write_bytes(image_bytes(1))
    with pytest.raises(ZsError, match="both images and class subfolders"):
        open_source(str(flat))


def test_file_list_with_int_labels_names_header_and_missing_files(tmp_path):
    make_flat_folder(tmp_path / "d", n=3)
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\nd/img_002.jpg,1\n# a comment\n\nd/img_000.jpg,0\nd/img_001.png\nd/gone.jpg,1\n")
    src = list_source(lst)
    assert src.ids == ["d/gone.jpg", "d/img_000.jpg", "d/img_001.png", "d/img_002.jpg"]
    assert src.labels.tolist() == [1, 0, -1, 1]
    with pytest.raises(OSError):
        src.read(0)  # recorded as unreadable by extract, never dropped
    named = tmp_path / "named.txt"
    named.write_text("d/img_000.jpg,zebra\nd/img_001.png,ant\n")
    src = open_source(str(named))
    assert src.class_names == ["ant", "zebra"] and src.labels.tolist() == [1, 0]
    bad = tmp_path / "bad.csv"
    bad.write_text("a.jpg,1,extra\n")
    with pytest.raises(ZsError, match="expected 'path' or 'path,label'"):
        list_source(bad)


def test_brace_expansion():
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}/x{1..2}") == ["a/x1", "a/x2", "b/x1", "b/x2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_webdataset_keys_labels_and_bytes_match_the_folder(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3, corrupt={"b": ["truncated"]})
    folder_to_webdataset(root, str(tmp_path / "wds" / "shard-{:05d}.tar"), shards=2)
    src = open_source(str(tmp_path / "wds" / "shard-{00000..00001}.tar"))
    folder = open_source(str(root))
    assert src.kind == "webdataset"
    assert src.ids == [i.rsplit(".", 1)[0] for i in folder.ids]
    assert src.labels.tolist() == folder.labels.tolist()
    assert all(src.read(r) == folder.read(r) for r in range(len(src)))
    with pytest.raises(ZsError, match="does not exist"):
        webdataset_source(str(tmp_path / "wds" / "shard-{00000..00002}.tar"))


def test_fraction_is_seeded_stratified_and_sorted(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=10)
    src = open_source(str(root))
    s1 = subset_fraction(src, 0.3, seed=1)
    assert np.bincount(s1.labels).tolist() == [3, 3, 3]
    assert s1.ids == sorted(s1.ids)
    assert subset_fraction(src, 0.3, seed=1).ids == s1.ids
    assert subset_fraction(src, 0.3, seed=2).ids != s1.ids
    assert subset_fraction(src, 1.0, seed=5).ids == src.ids
    with pytest.raises(ZsError, match="fraction"):
        subset_fraction(src, 0.0)


@pytest.mark.parametrize("kind", ["truncated", "empty", "notimage"])
def test_decode_rejects_corrupt_data(kind):
    with pytest.raises(Exception):
        decode_rgb(corrupt_bytes(kind))


def test_decode_gives_rgb_for_grayscale_png():
    img = decode_rgb(image_bytes(3, "PNG"))  # seed 3: saved as grayscale
    assert img.mode == "RGB"


def test_dataset_missing_copy_is_one_line_error_naming_the_path(tmp_path):
    with pytest.raises(ZsError) as e:
        open_source(dataset="cifar10", root=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "cifar-10-batches-py") in msg
    with pytest.raises(ZsError, match="did you mean: cifar10"):
        open_source(dataset="cifar01", root=str(tmp_path))


def test_dataset_eurosat_local_copy_uses_builtin_class_names(tmp_path):
    base = tmp_path / "eurosat" / "2750"
    make_image_folder(base, classes=("AnnualCrop", "Forest"), per_class=2)
    src = open_source(dataset="eurosat", root=str(tmp_path))
    from zoomshot.vocab import load_vocabulary

    assert src.class_names == load_vocabulary("eurosat").classnames
    assert src.ids[0] == "eurosat/2750/AnnualCrop/AnnualCrop_000.jpg"  # relative to --root
    assert src.labels.tolist() == [0, 0, 1, 1]
    assert src.vocab_name == "eurosat"
    assert decode_rgb(src.read(3)).size[0] >= 32


def test_dataset_with_a_relative_root_reads_its_images(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "imagenet" / "val", classes=("n01", "n02"), per_class=2)
    monkeypatch.chdir(tmp_path)
    src = open_source(dataset="imagenet1k", root="imagenet", split="val")  # was read from /imagenet/...
    assert src.ids[0] == "n01/n01_000.jpg" and decode_rgb(src.read(0)).mode == "RGB"


def test_caltech101_labels_index_the_vocabulary_with_background_first(tmp_path):
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    for i, c in enumerate(("BACKGROUND_Google", "Faces", "Faces_easy", "Leopards")):  # the real first four
        (cats / c).mkdir(parents=True)
        (cats / c / "image_0001.jpg").write_bytes(image_bytes(i))
    src = open_source(dataset="caltech101", root=str(tmp_path))
    assert [src.class_names[i] for i in src.labels] == ["off-center face", "centered face", "leopard"]
    assert src.ids == ["all/0", "all/1", "all/2"] and decode_rgb(src.read(2)).mode == "RGB"
