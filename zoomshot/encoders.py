"""The encoder registry: spec strings -> encoders with one interface.

Specs and keys are as docs/design.md ("Encoders: specs and keys") describes: ALIAS, timm:NAME[.TAG],
open_clip:ARCH[:PRETRAINED] or py:MODULE_OR_FILE.py:FACTORY, each optionally followed by @random or
@/path/to/weights; the key is the alias, NAME, ARCH or the plug-in's `name`, never a path or weights.
Default weights load offline first (`check_loadable`, before any image is listed): weights already in
the local Hugging Face hub cache load from it with the hub switched off, so no request is made;
missing ones are downloaded only when HF_HUB_OFFLINE is unset and the hub answers a 3 s connection
probe; otherwise one line names the file the cache should hold and how to fill it.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from zoomshot.cache import FAMILIES, EncoderEntry, safe_key
from zoomshot.errors import ZsError, did_you_mean

# Registries as data: alias -> (spec, family, what it is).
ALIASES: dict[str, tuple[str, str, str]] = {
    "vit_b16": ("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k", "vision", "supervised ViT-B/16 (IN-21k → IN-1k)"),
    "vit_s16": ("timm:vit_small_patch16_224.augreg_in21k_ft_in1k", "vision", "supervised ViT-S/16"),
    "resnet50": ("timm:resnet50.a1_in1k", "vision", "ResNet-50 (timm A1 recipe, IN-1k)"),
    "resnet18": ("timm:resnet18.a1_in1k", "vision", "ResNet-18 (timm A1 recipe, IN-1k)"),
    "deit_s16": ("timm:deit_small_patch16_224.fb_in1k", "vision", "DeiT-S/16 (IN-1k)"),
    "mobilenetv3_l": ("timm:mobilenetv3_large_100.ra_in1k", "vision", "MobileNetV3-Large 1.0 (IN-1k)"),
    "dinov2_b14": ("timm:vit_base_patch14_dinov2.lvd142m", "vision", "DINOv2 ViT-B/14 (self-supervised, LVD-142M)"),
    "dinov2_s14": ("timm:vit_small_patch14_dinov2.lvd142m", "vision", "DINOv2 ViT-S/14 (self-supervised, LVD-142M)"),
    "convnext_b": ("timm:convnext_base.fb_in22k_ft_in1k", "vision", "ConvNeXt-B (IN-22k → IN-1k)"),
    "clip_vit_b16": ("open_clip:ViT-B-16:openai", "clip", "OpenAI CLIP ViT-B/16"),
    "clip_vit_b32": ("open_clip:ViT-B-32:openai", "clip", "OpenAI CLIP ViT-B/32"),
    "clip_vit_l14": ("open_clip:ViT-L-14:openai", "clip", "OpenAI CLIP ViT-L/14"),
    "clip_rn50": ("open_clip:RN50:openai", "clip", "OpenAI CLIP ResNet-50"),
}
_ALIAS_OF_SPEC = {spec: alias for alias, (spec, _, _) in ALIASES.items()}
PREFIXES = ("timm:", "open_clip:", "py:")
SPEC_HELP = ("an alias (`zs encoders`), timm:NAME[.TAG], open_clip:ARCH[:PRETRAINED] or "
             "py:FILE.py:FACTORY, optionally with @random or @/path/to/weights")


@dataclass(frozen=True)
class ParsedSpec:
    spec: str  # canonical (an alias resolved), without the weights suffix
    weights: str  # "default" | "random" | a local path

    @property
    def key(self) -> str:
        """The encoder key (see the module docstring); `py:` asks the plug-in."""
        if self.spec in _ALIAS_OF_SPEC:  # an alias, or an alias's spec written out
            return _ALIAS_OF_SPEC[self.spec]
        library, _, name = self.spec.partition(":")
        if library == "timm":
            return safe_key(name.split(".")[0])
        if library == "open_clip":
            if name.startswith("hf-hub:"):
                name = name[len("hf-hub:"):].partition(":")[0].rstrip("/").rsplit("/", 1)[-1]
            return safe_key(name.partition(":")[0])
        return _plugin_key(self)


def parse_spec(raw: str) -> ParsedSpec:
    """Split SPEC@WEIGHTS and resolve an alias; raises ZsError listing close matches."""
    raw = raw.strip()
    base, _, weights = raw.partition("@")
    if not base:
        raise ZsError(f"empty encoder spec {raw!r}; expected {SPEC_HELP}")
    if base not in ALIASES and not base.startswith(PREFIXES):
        raise ZsError(f"unknown encoder {base!r}{did_you_mean(base, ALIASES)}; expected {SPEC_HELP}")
    weights = weights or "default"
    if weights not in ("default", "random"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ZsError(f"weights file {weights!r} in {raw!r} does not exist; give an existing file, "
                          f"@random for random initialisation, or no suffix for the default pretrained "
                          f"weights")
        weights = str(path.resolve())
    return ParsedSpec(ALIASES[base][0] if base in ALIASES else base, weights)


@dataclass(repr=False, eq=False)
class Encoder:
    """One encoder behind one interface, whatever library it came from."""

    parsed: ParsedSpec
    family: str
    model: Any
    preprocess: Callable
    preprocess_config: dict
    encode_image: Callable  # (B, 3, H, W) -> (B, dim)
    encode_text_fn: Callable | None
    dim: int
    normalized: bool
    versions: dict
    device: str = "cpu"

    def __post_init__(self):
        self.key, self.spec, self.weights = self.parsed.key, self.parsed.spec, self.parsed.weights

    def __repr__(self) -> str:
        return f"Encoder({self.spec!r}, family={self.family}, dim={self.dim}, weights={self.weights})"

    def to(self, device) -> "Encoder":
        if hasattr(self.model, "to"):
            self.model.to(device)
        self.device = str(device)
        return self

    def encode_text(self, texts: list[str]):
        if self.encode_text_fn is None:
            raise ZsError(f"encoder {self.spec!r} is of family {self.family!r} and has no text tower")
        return self.encode_text_fn(texts)

    def entry(self) -> EncoderEntry:
        return EncoderEntry(key=self.key, spec=self.spec, family=self.family, dim=self.dim,
                            normalized=self.normalized, weights=self.weights,
                            preprocess=self.preprocess_config, versions=self.versions)


# -- default weights: offline first ------------------------------------------------------------
HUB_PROBE_SECONDS = 3.0


def hub_files(parsed: ParsedSpec) -> list[tuple[str, str]]:
    """(repo, file) candidates on the Hugging Face hub for a spec's default weights, the preferred
    first; [] when the library takes them from elsewhere (a URL) or the spec has no default weights."""
    if parsed.weights != "default":
        return []
    try:
        if parsed.spec.startswith("timm:"):
            import timm

            pc = timm.models.get_pretrained_cfg(parsed.spec[len("timm:"):])
            repo = getattr(pc, "hf_hub_id", None)
            if repo:
                name = getattr(pc, "hf_hub_filename", None)
                return [(repo, name)] if name else [(repo, "model.safetensors"), (repo, "pytorch_model.bin")]
        elif parsed.spec.startswith("open_clip:"):
            import open_clip

            arch, _, tag = parsed.spec[len("open_clip:"):].partition(":")
            hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "") if tag else ""
            if hub:
                repo, name = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
                return ([(repo, name)] if name else
                        [(repo, "open_clip_model.safetensors"), (repo, "open_clip_pytorch_model.bin")])
    except Exception:  # an unknown model: build_encoder says so with its own message
        return []
    return []


def _cached(files: list[tuple[str, str]]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for repo, name in files:
        p = try_to_load_from_cache(repo, name)
        if isinstance(p, str):
            return p
    return None


def _hub_reachable() -> bool:
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=HUB_PROBE_SECONDS).close()
        return True
    except OSError:
        return False


@functools.cache
def check_loadable(parsed: ParsedSpec) -> str:
    """Before any work: can this spec's weights load here? Returns how ("random", "local file",
    "hub cache: PATH", "download from the hub", "library default"); raises a one-line ZsError
    naming the missing file and how to fill the cache. The model (or plug-in factory) must exist too.
    A spec found loadable is not checked again in the process (extract checks before listing the
    images, build_encoder before building: one hub probe, one plug-in load)."""
    _check_exists(parsed)
    if parsed.weights == "random":
        return "random initialisation"
    if parsed.weights != "default":
        return f"local file {parsed.weights}"
    files = hub_files(parsed)
    if not files:
        return "the library's own loader"
    path = _cached(files)
    if path is not None:
        return f"hub cache: {path}"
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE and _hub_reachable():
        return "download from the hub (not in the local cache)"
    why = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} cannot be reached"
    repo, name = files[0]
    raise ZsError(f"the default weights of {parsed.spec!r} are not in the local hub cache ({constants.HF_HUB_CACHE} "
                  f"should hold {repo}/{name}) and {why}; fill it on a machine with network with "
                  f"`huggingface-cli download {repo} {name}` and copy that hub cache folder here (or point HF_HOME "
                  f"at a copy), or use {parsed.spec}@/path/to/weights or {parsed.spec}@random")


def _check_exists(parsed: ParsedSpec) -> None:
    if parsed.spec.startswith("timm:"):
        import timm

        arch = parsed.spec[len("timm:"):].split(".")[0]
        if not timm.is_model(arch):
            raise ZsError(f"timm has no model {arch!r}{did_you_mean(arch, timm.list_models())}")
    elif parsed.spec.startswith("open_clip:"):
        import open_clip

        arch = parsed.spec[len("open_clip:"):].partition(":")[0]
        if arch not in open_clip.list_models() and not arch.startswith("hf-hub:"):
            raise ZsError(f"open_clip has no architecture {arch!r}{did_you_mean(arch, open_clip.list_models())}")
    elif parsed.spec.startswith("py:"):
        _load_plugin_factory(parsed)


@contextlib.contextmanager
def _hub_switched_off(parsed: ParsedSpec):
    """Load cached default weights without a single hub request (no ~50 s of retries offline)."""
    files = hub_files(parsed)
    if not files or _cached(files) is None:
        yield
        return
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def build_encoder(spec: str, device: str = "cpu") -> Encoder:
    """The one factory: a spec string -> an Encoder in eval mode on `device`."""
    parsed = parse_spec(spec)
    check_loadable(parsed)
    library = parsed.spec.split(":")[0]
    builder = {"timm": _build_timm, "open_clip": _build_open_clip, "py": _build_plugin}[library]
    with _hub_switched_off(parsed), _seeded(parsed):
        return builder(parsed).to(device)


@contextlib.contextmanager
def _seeded(parsed: ParsedSpec):
    """SPEC@random is one fixed draw, seeded by the spec: every process of a sharded run, every
    resume and every later rebuild (zoomshot.load, export) gets the same model."""
    if parsed.weights != "random":
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(parsed.spec.encode()))
        yield


def _versions(**extra) -> dict:
    import torch

    return {"torch": torch.__version__, "python": sys.version.split()[0], **extra}


def _load_error(parsed: ParsedSpec, err: Exception) -> ZsError:
    """A failed model load in one line; for default weights, how to get them onto an offline machine."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if parsed.weights != "default":  # a checkpoint that does not fit the model
        return ZsError(f"could not load {parsed.spec!r} with weights {parsed.weights!r}: {first[:300]}")
    return ZsError(
        f"could not load the default pretrained weights of {parsed.spec!r} ({type(err).__name__}: {first}); "
        f"on an offline machine put them in the local hub cache (and set HF_HUB_OFFLINE=1 to skip the hub's "
        f"retries), or use {parsed.spec}@/path/to/weights for a local file, or {parsed.spec}@random for "
        f"random initialisation"
    )


def _json_config(library: str, cfg: dict) -> dict:
    return {"library": library, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}}


def _build_timm(parsed: ParsedSpec) -> Encoder:
    import timm
    import torch

    # A local file goes through timm's own loader: it drops the classifier, as for hub weights.
    local = parsed.weights not in ("default", "random")
    overlay = {"pretrained_cfg_overlay": {"file": parsed.weights}} if local else {}
    try:
        model = timm.create_model(parsed.spec[len("timm:"):], pretrained=parsed.weights != "random",
                                  num_classes=0, **overlay)
    except Exception as e:  # hub unreachable, checkpoint mismatch: both user-fixable
        raise _load_error(parsed, e) from None
    model.eval()
    cfg = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**cfg, is_training=False)
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, *cfg["input_size"])).shape[-1])
    return Encoder(parsed, "vision", model, transform, _json_config("timm", cfg), model, None,
                   dim, False, _versions(timm=timm.__version__))


def register_open_clip_config(name: str, cfg: dict) -> None:
    """Make an open_clip architecture named `name` available (e.g. a tiny config for tests)."""
    import tempfile

    import open_clip

    d = Path(tempfile.mkdtemp(prefix="zs-open-clip-cfg-"))
    (d / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)


def _no_weights_warning(record: logging.LogRecord) -> bool:
    return "No pretrained weights loaded" not in record.getMessage()


def _build_open_clip(parsed: ParsedSpec) -> Encoder:
    import open_clip
    import torch

    arch, _, tag = parsed.spec[len("open_clip:"):].partition(":")
    pretrained = {"random": None, "default": tag or None}.get(parsed.weights, parsed.weights)
    if parsed.weights == "default" and not tag and not arch.startswith("hf-hub:"):
        tags = [t for a, t in open_clip.list_pretrained() if a == arch]
        raise ZsError(f"open_clip:{arch} needs a pretrained tag (open_clip:{arch}:TAG"
                      f"{', one of: ' + ', '.join(tags) if tags else ''}), or @/path/to/weights, or @random")
    # open_clip warns on the root logger that no weights were loaded: @random asked for exactly that.
    if parsed.weights == "random":
        logging.getLogger().addFilter(_no_weights_warning)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    except Exception as e:
        raise _load_error(parsed, e) from None
    finally:
        logging.getLogger().removeFilter(_no_weights_warning)
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    pcfg = open_clip.get_model_preprocess_cfg(model)
    size = pcfg.get("size", 224)
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    with torch.inference_mode():
        dim = int(model.encode_image(torch.zeros(1, 3, *size)).shape[-1])

    def encode_image(batch):
        return model.encode_image(batch, normalize=True)

    def encode_text(texts):
        dev = next(model.parameters()).device
        return model.encode_text(tokenizer(list(texts)).to(dev), normalize=True)

    return Encoder(parsed, "clip", model, preprocess, _json_config("open_clip", pcfg), encode_image,
                   encode_text, dim, True, _versions(open_clip=open_clip.__version__))


def _load_plugin_factory(parsed: ParsedSpec) -> Callable:
    target, sep, factory = parsed.spec[len("py:"):].rpartition(":")
    if not sep or not target or not factory:
        raise ZsError(f"plug-in spec {parsed.spec!r} must be py:MODULE_OR_FILE.py:FACTORY")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ZsError(f"plug-in file {target!r} does not exist")
        mod_name = "zs_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path.resolve()))
        spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ZsError(f"cannot import plug-in module {target!r}: {e}") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        have = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise ZsError(f"plug-in {target!r} has no factory {factory!r}{did_you_mean(factory, have)}")
    return fn


# A plug-in's key is its `name`, known only once its factory ran: the object made to learn the key
# waits here for the build that follows, and the key stays (so the factory runs once per spec and
# weights, and an Encoder asking its key after the build does not run it again).
_PLUGIN_OBJECTS: dict[tuple, Any] = {}
_PLUGIN_KEYS: dict[tuple, str] = {}


def _plugin_id(parsed: ParsedSpec) -> tuple:
    file = Path(parsed.spec[len("py:"):].rpartition(":")[0]).expanduser()
    return (parsed.spec, parsed.weights, file.stat().st_mtime_ns if file.is_file() else None)  # an edited file is new


def _plugin_key(parsed: ParsedSpec) -> str:
    k = _plugin_id(parsed)
    if k not in _PLUGIN_KEYS:
        _PLUGIN_OBJECTS[k] = _make_plugin(parsed)
    return _PLUGIN_KEYS[k]


def _make_plugin(parsed: ParsedSpec):
    """The object the plug-in's factory returns, checked; its key noted in _PLUGIN_KEYS."""
    fn = _load_plugin_factory(parsed)
    with _seeded(parsed):
        obj = fn() if parsed.weights == "default" else fn(weights=parsed.weights)
    missing = [a for a in ("name", "family", "dim", "preprocess", "encode_image") if not hasattr(obj, a)]
    if missing:
        raise ZsError(f"plug-in {parsed.spec!r} returned an object without {', '.join(missing)}")
    _PLUGIN_KEYS[_plugin_id(parsed)] = safe_key(str(obj.name))
    return obj


def _build_plugin(parsed: ParsedSpec) -> Encoder:
    k = _plugin_id(parsed)
    obj = _PLUGIN_OBJECTS.pop(k) if k in _PLUGIN_OBJECTS else _make_plugin(parsed)
    family = obj.family
    if family == "clip" and not hasattr(obj, "encode_text"):
        raise ZsError(f"plug-in {parsed.spec!r} returned an object without encode_text")
    if family not in FAMILIES:
        raise ZsError(f"plug-in {parsed.spec!r} has family {family!r}; expected 'clip' or 'vision'")
    model = obj if hasattr(obj, "to") else getattr(obj, "model", obj)
    config = getattr(obj, "preprocess_config", {"library": "py", "name": str(obj.name)})
    return Encoder(parsed, family, model, obj.preprocess, config, obj.encode_image,
                   getattr(obj, "encode_text", None), int(obj.dim), bool(getattr(obj, "normalized", family == "clip")),
                   _versions(plugin=str(getattr(obj, "version", "unknown"))))
