"""`zs extract`'s configuration: every option and its one default (the CLI reads them from here)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ExtractConfig:
    out: str
    encoders: list[str]
    images: str | None = None
    image_column: str | None = None  # parquet input: the image column (default by layout)
    label_column: str | None = None  # parquet input: the label column
    dataset: str | None = None
    root: str | None = None
    split: str | None = None
    fraction: float = 1.0
    seed: int = 0
    vocabs: list[str] = field(default_factory=list)
    batch_size: int = 64
    device: str = "auto"
    workers: int | None = None  # None: a default from the core count
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    decode: str = "cpu"  # "gpu": torchvision.io.decode_jpeg on the device
    compile: bool = False
    channels_last: bool | None = None  # None: on for CUDA
    num_shards: int = 1  # job-array tasks
    shard_index: int = 0
    shard_rows: int | None = None  # rows per shard file; fixed by the first run
    progress: bool = True
