"""One source of defaults: a `zs` option that sets a config field is unset (None) unless given, so
the config's default applies, and its help names that default; an empty repeatable option is unset
too, and an off flag is the same as the config's False."""
from __future__ import annotations

import inspect
from dataclasses import MISSING, fields

import pytest

from zoomshot import cli

# command -> (its configs, option name -> config field where the names differ)
COMMANDS = {
    "extract_cmd": ("zoomshot.extract.config:ExtractConfig", {"encoder": "encoders", "vocab": "vocabs"}),
    "fit_cmd": ("zoomshot.fit.config:FitConfig", {}),
    "sweep_cmd": ("zoomshot.sweep:SweepConfig zoomshot.fit.config:FitConfig", {"train_vocab": "vocab", "method": "methods"}),
    "evaluate_cmd": ("zoomshot.evaluate.run:EvaluateConfig", {}),
    "synth_cmd": ("zoomshot.synth:SynthParams", {}),
}


def _config_defaults(paths: str) -> dict:
    import importlib

    out = {}
    for path in paths.split():
        module, _, name = path.partition(":")
        for f in fields(getattr(importlib.import_module(module), name)):
            if f.default is not MISSING:
                out.setdefault(f.name, f.default)
            elif f.default_factory is not MISSING:
                out.setdefault(f.name, f.default_factory())
    return out


def disagreements(command, configs: str, renamed: dict) -> list[str]:
    defaults = _config_defaults(configs)
    out = []
    for name, p in inspect.signature(command).parameters.items():
        field = renamed.get(name, name)
        if field not in defaults or p.default.default is ...:
            continue
        cli_default, want = p.default.default, defaults[field]
        if cli_default is None or cli_default == []:  # unset: nothing given
            if want not in (None, [], False) and f"default: {want}" not in (p.default.help or ""):
                out.append(f"{command.__name__} --{name}: help does not say 'default: {want}'")
        elif not (cli_default is False and want is False):  # an off flag is the config's False
            out.append(f"{command.__name__} --{name}: the CLI defaults to {cli_default!r}, the config to {want!r}; "
                       f"leave it unset (None) so the config's default applies")
    return out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_cli_options_leave_defaults_to_the_config(name):
    configs, renamed = COMMANDS[name]
    assert disagreements(getattr(cli, name), configs, renamed) == []


def test_a_repeated_default_is_found():
    import typer

    def fake_cmd(lr: float = typer.Option(0.5, "--lr"), tau: float = typer.Option(None, "--tau", help="τ.")):
        pass

    found = disagreements(fake_cmd, "zoomshot.fit.config:FitConfig", {})
    assert len(found) == 2 and "--lr" in found[0] and "--tau: help" in found[1]
