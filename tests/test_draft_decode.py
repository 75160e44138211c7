"""Large JPEGs are decoded at a reduced scale (PIL draft mode) when every preprocessing group resizes
them down anyway; the decoded image still has at least the side the transforms resize to."""
import io

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from zoomshot.extract.loader import draft_side
from zoomshot.sources import decode_rgb


def _jpeg(w, h, fmt="JPEG"):
    arr = (np.arange(w * h * 3).reshape(h, w, 3) % 251).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def test_draft_side_is_the_largest_first_resize_and_none_when_unknown():
    timm_like = T.Compose([T.Resize(235), T.CenterCrop(224), T.ToTensor()])
    clip_like = T.Compose([T.Resize(256), T.CenterCrop(256), T.ToTensor()])
    assert draft_side([timm_like, clip_like]) == 256
    assert draft_side([T.Compose([T.Resize((300, 200)), T.ToTensor()])]) == 300
    assert draft_side([timm_like, T.Compose([T.CenterCrop(224), T.Resize(224)])]) is None  # crop before resize
    assert draft_side([timm_like, lambda img: img]) is None  # a plug-in's own callable
    assert draft_side([T.Compose([T.Resize(224, max_size=300)])]) is None


@pytest.mark.parametrize("w,h,side,expect", [(2000, 1500, 235, (500, 375)), (1000, 750, 235, (500, 375)),
                                             (400, 300, 235, (400, 300))])
def test_a_large_jpeg_decodes_smaller_but_never_below_the_side(w, h, side, expect):
    img = decode_rgb(_jpeg(w, h), side)
    assert img.mode == "RGB" and img.size == expect and min(img.size) >= side
    assert decode_rgb(_jpeg(w, h)).size == (w, h)  # without a side: full size
    assert decode_rgb(_jpeg(w, h, "PNG"), side).size == (w, h)  # only JPEG has a cheap reduced decode
