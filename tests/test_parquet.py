"""Parquet input (img2dataset's and Hugging Face datasets' layouts) and WebDataset shards give the
same cache as the folder they were made from."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import VISION_PLUGIN, folder_to_webdataset, make_image_folder
from zoomshot.cache import open_cache
from zoomshot.cli import app
from zoomshot.errors import ZsError
from zoomshot.extract.runner import ExtractConfig, extract
from zoomshot.sources import ParquetReader, open_source

CLASSES = ("cat", "dog", "fish")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("pq") / "imgs", classes=CLASSES, per_class=3,
                             corrupt={"dog": ["truncated"]})


def folder_rows(folder):
    src = open_source(str(folder))
    return src.ids, [src.read(r) for r in range(len(src))], src.labels.tolist()


def write_hf_parquet(folder, out_dir, files=2, row_group_size=3):
    """Hugging Face datasets' layout: image {bytes, path}, label (ClassLabel names in the metadata)."""
    ids, blobs, labels = folder_rows(folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"names": list(CLASSES), "_type": "ClassLabel"}}}}
    cut = len(ids) // files + 1
    for f in range(files):
        part = slice(f * cut, (f + 1) * cut)
        table = pa.table({"image": [{"bytes": b, "path": i.split("/")[-1]} for b, i in zip(blobs[part], ids[part])],
                          "label": pa.array(labels[part], pa.int64())})
        table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
        pq.write_table(table, out_dir / f"train-{f:05d}-of-{files:05d}.parquet", row_group_size=row_group_size)
    return str(out_dir / "*.parquet")


def write_img2dataset_parquet(folder, path):
    """img2dataset's layout: key, jpg (bytes), status; no labels."""
    ids, blobs, _ = folder_rows(folder)
    keys = [i.rsplit(".", 1)[0] for i in ids]
    pq.write_table(pa.table({"key": keys, "jpg": blobs, "status": ["success"] * len(ids)}), path, row_group_size=4)
    return str(path)


def test_parquet_webdataset_and_folder_give_the_same_cache(tmp_path, images, monkeypatch):
    monkeypatch.setattr(ParquetReader, "SLICE_ROWS", 2)  # row groups of 3-4 rows stream in slices
    kw = dict(encoders=[VISION_PLUGIN], workers=0, progress=False, batch_size=4, device="cpu")
    folder_to_webdataset(images, str(tmp_path / "wds" / "part-{:03d}.tar"), shards=2)
    hf = write_hf_parquet(images, tmp_path / "hf")
    i2d = write_img2dataset_parquet(images, tmp_path / "i2d.parquet")
    inputs = {"folder": str(images), "wds": str(tmp_path / "wds" / "part-{000..001}.tar"), "hf": hf, "i2d": i2d}
    for name, src in inputs.items():
        extract(ExtractConfig(out=str(tmp_path / f"{name}.h5"), images=src, **kw))
    with open_cache(tmp_path / "folder.h5") as ref:
        key = next(iter(ref.encoders))
        want, status, labels = ref.image(key), ref.status.tolist(), ref.labels.tolist()
        assert 1 in status  # the truncated image is one unreadable row, kept in place
        ref_ids = ref.ids
        ref_names = ref.class_names
    for name in ("wds", "hf", "i2d"):
        with open_cache(tmp_path / f"{name}.h5") as c:
            np.testing.assert_array_equal(c.image(key), want, err_msg=name)
            assert c.status.tolist() == status, name
            if name != "i2d":  # img2dataset shards carry no labels
                assert c.labels.tolist() == labels, name
            if name == "hf":
                assert c.class_names == ref_names  # from the ClassLabel metadata
            else:
                assert c.ids == [i.rsplit(".", 1)[0] for i in ref_ids], name


def test_parquet_columns_and_bad_input_are_one_line_errors(tmp_path, images):
    hf = write_hf_parquet(images, tmp_path / "hf", files=1)
    src = open_source(hf, image_column="image", label_column="label")
    assert src.kind == "parquet" and len(src) == 10 and src.ids[0] == "train-00000-of-00001/0"
    with pytest.raises(ZsError, match="no column 'pixels'.*image, label"):
        open_source(hf, image_column="pixels")
    with pytest.raises(ZsError, match="for parquet input"):
        open_source(str(images), image_column="image")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ZsError, match="not a parquet file"):
        open_source(str(tmp_path / "junk.parquet"))
    pq.write_table(pa.table({"key": ["a", "b"], "jpg": [None, b"x"]}), tmp_path / "nulls.parquet")
    src = open_source(str(tmp_path / "nulls.parquet"))
    with pytest.raises(OSError, match="no image"):
        src.read(0)
    assert src.read(1) == b"x"
    # rows out of order (as DataLoader workers ask for them) read the same cells
    src = open_source(hf)
    order = [7, 2, 9, 0, 3, 3, 8, 1]
    want = [open_source(hf).read(r) for r in order]
    reader = ParquetReader(src.reader_pool[0].files, "image")
    reader.SLICE_ROWS = 2
    assert [reader.read(src.items[r]) for r in order] == want
    res = CliRunner().invoke(app, ["extract", "--images", str(tmp_path / "none-*.parquet"), "--encoder",
                                   VISION_PLUGIN, "--out", str(tmp_path / "x.h5")])
    assert res.exit_code == 2 and "matches no parquet files" in res.output
