"""The encoder registry: spec parsing, every alias resolvable, tiny models built, local weights, plug-ins."""
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from zoomshot.cli import app
from conftest import register_tiny_clip
from zoomshot.encoders import ALIASES, build_encoder, parse_spec
from zoomshot.errors import ZsError

@pytest.fixture(scope="module")
def tiny_clip():
    return register_tiny_clip().removesuffix("@random")


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_alias_names_a_real_model_with_pretrained_weights(alias):
    import open_clip
    import timm

    spec, family, _ = ALIASES[alias]
    p = parse_spec(alias)
    assert (p.spec, p.key, p.weights) == (spec, alias, "default")
    if family == "clip":
        arch, tag = spec[len("open_clip:"):].split(":")
        assert (arch, tag) in open_clip.list_pretrained()
    else:
        name = spec[len("timm:"):]
        assert timm.is_model(name.split(".")[0])
        assert name in timm.list_pretrained(name)


def test_parse_weights_suffix(tmp_path):
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    assert parse_spec("resnet50@random").weights == "random"
    assert parse_spec(f"timm:resnet18@{w}").weights == str(w.resolve())
    assert parse_spec("timm:resnet18.a1_in1k").key == "resnet18"  # the alias of that spec
    assert parse_spec("timm:resnet18.tv_in1k").key == "resnet18"
    assert parse_spec("open_clip:ViT-B-16:laion2b_s34b_b88k").key == "ViT-B-16"
    assert parse_spec("open_clip:ViT-B-16:openai").key == "clip_vit_b16"


@pytest.mark.parametrize("bad,needle", [
    ("vit_b61", "did you mean: vit_b16"),
    ("resnet50@/no/such/file.pth", "does not exist"),
    ("timm:resnet5O@random", "did you mean: resnet50"),
    ("open_clip:ViT-B-61@random", "did you mean"),
    ("py:nofile.py:make", "does not exist"),
])
def test_bad_specs_are_one_line_errors(bad, needle):
    with pytest.raises(ZsError) as e:
        build_encoder(bad)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_timm_random_and_local_weights_file(tmp_path):
    from safetensors.torch import save_file

    a = build_encoder("timm:test_vit@random")
    assert (a.family, a.weights, a.normalized) == ("vision", "random", False)
    x = torch.randn(2, *a.preprocess_config["input_size"])
    with torch.inference_mode():
        fa = a.encode_image(x)
    assert fa.shape == (2, a.dim)
    # other weights than the random draw, so that equal outputs prove the file was loaded
    state = {k: (v + 0.05 * torch.randn_like(v)) if v.is_floating_point() else v
             for k, v in a.model.state_dict().items()}
    a.model.load_state_dict(state)
    with torch.inference_mode():
        fa = a.encode_image(x)
    path = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    b = build_encoder(f"timm:test_vit@{path}")
    assert b.weights == str(path.resolve())
    with torch.inference_mode():
        torch.testing.assert_close(b.encode_image(x), fa)


def test_random_weights_are_one_draw_per_spec_and_leave_the_global_rng_alone():
    x = torch.randn(2, 3, 160, 160)
    torch.manual_seed(123)
    a = build_encoder("timm:test_vit@random")
    after_a = torch.rand(1)
    torch.manual_seed(123)
    b = build_encoder("timm:test_vit@random")
    assert torch.equal(torch.rand(1), after_a)
    torch.manual_seed(7)
    c = build_encoder("timm:test_vit@random")
    with torch.inference_mode():
        fa = a.encode_image(x)
        assert torch.equal(fa, b.encode_image(x)) and torch.equal(fa, c.encode_image(x))


def test_open_clip_random_and_local_weights_file(tmp_path, tiny_clip):
    a = build_encoder(f"{tiny_clip}@random")
    assert (a.family, a.dim, a.normalized) == ("clip", 16, True)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        fi, ft = a.encode_image(x), a.encode_text(["a photo of a cat", "a dog"])
    assert ft.shape == (2, 16)
    torch.testing.assert_close(fi.norm(dim=1), torch.ones(3))
    path = tmp_path / "tiny.pt"
    torch.save(a.model.state_dict(), path)
    b = build_encoder(f"{tiny_clip}@{path}")
    with torch.inference_mode():
        torch.testing.assert_close(b.encode_image(x), fi)
        torch.testing.assert_close(b.encode_text(["a photo of a cat", "a dog"]), ft)


def test_default_weights_offline_error_says_what_to_do(tiny_clip):
    with pytest.raises(ZsError) as e:
        build_encoder(tiny_clip + ":nosuchtag")
    assert "@random" in str(e.value) and "@/path/to/weights" in str(e.value)


def test_plugin_from_file(tmp_path):
    f = tmp_path / "my_encoder.py"
    f.write_text(textwrap.dedent('''
        import torch
        class Mine:
            name, family, dim = "mine", "vision", 5
            def __init__(self, weights="default"):
                self.weights = weights
                self.proj = torch.nn.Linear(3, 5)
            def preprocess(self, img):
                return torch.zeros(3, 4, 4)
            def encode_image(self, batch):
                return self.proj(batch.mean(dim=(2, 3)))
        def make(weights="default"):
            return Mine(weights)
        def broken():
            return object()
    '''))
    e = build_encoder(f"py:{f}:make")
    assert (e.family, e.dim, e.key) == ("vision", 5, "mine")  # the plug-in's name, never its path
    assert e.encode_image(torch.zeros(2, 3, 4, 4)).shape == (2, 5)
    with pytest.raises(ZsError, match="without name"):
        build_encoder(f"py:{f}:broken")
    with pytest.raises(ZsError, match="did you mean: make"):
        build_encoder(f"py:{f}:mak")
    with pytest.raises(ZsError, match="family 'vision' and has no text tower"):
        e.encode_text(["x"])


def test_cli_encoders_lists_every_alias():
    r = CliRunner().invoke(app, ["encoders"])
    assert r.exit_code == 0
    for alias in ALIASES:
        assert alias in r.output
