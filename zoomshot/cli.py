"""The `zs` command line: one typer app, thin commands over library functions.

Each command parses options and calls one library function. Heavy imports (torch, open_clip,
timm, faiss, matplotlib) happen inside the commands, so `zs --help` answers fast. A `ZsError`
raised below becomes a one-line `error: ...` on stderr and exit code 2.
"""
from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from zoomshot.devices import DEVICE_HELP
from zoomshot.errors import ZsError
from zoomshot.extract.config import ExtractConfig
from zoomshot.fit.config import FitConfig
from zoomshot.sweep import SweepConfig
from zoomshot.synth import WARPED_DEFAULTS, SynthParams


class _Commands(TyperGroup):
    """The `zs` group: a ZsError raised by any command becomes one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZsError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Commands,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="zoomshot: CLIP's zero-shot ability for any vision encoder, through a feature cache.",
)
cache_app = typer.Typer(no_args_is_help=True, help="Inspect cache files.")
app.add_typer(cache_app, name="cache")
command = app.command


def given(**options) -> dict:
    """The options given on the command line: an unset one (None) leaves the config's default."""
    return {k: v for k, v in options.items() if v is not None}


def unset(config, flag: str, help: str):
    """An option unset (None) unless given, so the config's default applies; '{}' in its help
    becomes 'default: X', read from the config (the one home of each default)."""
    f = next(f for f in fields(config) if f.name == flag[2:].replace("-", "_"))
    value = f.default_factory() if f.default is MISSING else f.default
    return typer.Option(None, flag, help=help.format(f"default: {value}"))


# ---------------------------------------------------------------- cache --------------------
@cache_app.command("info")
def cache_info(path: Path = typer.Argument(..., help="A zs-cache .h5 file.")):
    """Say what a cache holds, in a few lines."""
    from zoomshot.cache import open_cache

    with open_cache(path) as c:
        typer.echo(c.info())


# ---------------------------------------------------------------- encoders / extract ---------
@command("encoders")
def encoders_cmd(
    check: bool = typer.Option(False, "--check", help="Say for each SPEC whether it can load here (weights "
                               "in the local hub cache, hub reachable, file present); exit 1 when one cannot."),
    specs: Optional[List[str]] = typer.Argument(None, help="Specs to --check."),
):
    """List the encoder aliases, their specs and families (any timm:/open_clip:/py: spec works too)."""
    from zoomshot.encoders import ALIASES, SPEC_HELP, check_loadable, parse_spec

    if check or specs:
        if not specs:
            raise ZsError("--check needs specs, e.g. zs encoders --check resnet18 clip_vit_b16")
        bad = 0
        for spec in specs:
            try:
                typer.echo(f"{spec}: loads ({check_loadable(parse_spec(spec))})")
            except ZsError as e:
                bad += 1
                typer.echo(f"{spec}: cannot load: {e}")
        if bad:
            raise typer.Exit(1)
        return

    w = max(map(len, ALIASES))
    ws = max(len(spec) for spec, _, _ in ALIASES.values())
    for alias, (spec, family, description) in ALIASES.items():
        typer.echo(f"{alias:<{w}}  {family:<6}  {spec:<{ws}}  {description}")
    typer.echo(f"\nA spec is {SPEC_HELP}.")


# (section owned by the extract stage)
@command("extract")
def extract_cmd(
    images: Optional[str] = typer.Option(None, "--images", help="ImageFolder tree, flat folder, .txt/.csv list "
                                         "(path[,label]), WebDataset tars ('data/shard-{00000..00099}.tar') or "
                                         "parquet files ('data/*.parquet')."),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Parquet: the image column (default: "
                                               "jpg/png/webp as img2dataset writes, else image as Hugging Face does)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Parquet: the label column (default: "
                                               "label, when there is one)."),
    encoder: List[str] = typer.Option(..., "--encoder", help="Encoder spec (repeat for several; see `zs encoders`)."),
    out: Path = typer.Option(..., "--out", help="Cache file, e.g. cache/NAME.h5 (shards go to cache/NAME.shards/)."),
    fraction: Optional[float] = unset(ExtractConfig, "--fraction", "Seeded random subset, stratified when "
                                      "labelled ({})."),
    seed: Optional[int] = unset(ExtractConfig, "--seed", "Seed of the subset ({})."),
    vocab: List[str] = typer.Option([], "--vocab", help="Vocabulary for CLIP encoders: built-in name, 'classes' "
                                    "or FILE.json (repeatable; default: the source's classes, else imagenet1k)."),
    batch_size: Optional[int] = unset(ExtractConfig, "--batch-size", "{}."),
    device: Optional[str] = unset(ExtractConfig, "--device", f"{DEVICE_HELP} ({{}})"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode worker processes (default: on CUDA "
                                          "the cores less one; on the CPU 0: threads decode between forwards)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A torchvision dataset read from --root "
                                          "(cifar10, cifar100, stl10, food101, pets, flowers102, caltech101, dtd, "
                                          "eurosat, imagenet1k); never downloaded."),
    root: Optional[str] = typer.Option(None, "--root", help="Folder holding the --dataset copy."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split (default: test, or the only one)."),
    num_shards: Optional[int] = unset(ExtractConfig, "--num-shards", "Job-array size: this run does 1/K "
                                      "of the rows ({})."),
    shard_index: Optional[int] = unset(ExtractConfig, "--shard-index", "This job's index in 0..K-1 ({})."),
    shard_rows: Optional[int] = typer.Option(None, "--shard-rows", help="Rows per shard file (fixed by the first run)."),
    precision: Optional[str] = unset(ExtractConfig, "--precision", "auto (bf16 on CUDA), fp32, bf16, "
                                     "fp16 ({})."),
    decode: Optional[str] = unset(ExtractConfig, "--decode", "cpu (PIL in workers) or gpu (JPEGs decoded "
                                  "on the device) ({})."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the image encoders."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
):
    """Run encoders over images once and write their embeddings (and CLIP text vocabularies) to a cache."""
    from zoomshot.extract.runner import extract

    summary = extract(ExtractConfig(out=str(out), encoders=list(encoder), vocabs=list(vocab), compile=compile,
                                    progress=not quiet, **given(
        images=images, image_column=image_column, label_column=label_column, dataset=dataset, root=root,
        split=split, fraction=fraction, seed=seed, batch_size=batch_size, device=device, workers=workers,
        precision=precision, decode=decode, num_shards=num_shards, shard_index=shard_index,
        shard_rows=shard_rows)))
    typer.echo(summary.text(), err=True)
    if summary.failed:
        raise ZsError(summary.failed)


# ---------------------------------------------------------------- fit / synth --------------
# (section owned by the fit stage)
def _parse_bytes(text: str) -> int:
    """'4G', '512M', '1.5GB', '300000000' -> bytes (K/M/G/T are powers of 1024)."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not m:
        raise ZsError(f"--memory-budget {text!r} is not a size; write bytes or e.g. 512M, 4G")
    n = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))
    if n < 1 << 20:
        raise ZsError(f"--memory-budget {text!r} is under 1 MB; sizes are bytes unless suffixed (e.g. 512M, 4G)")
    return n


@command("fit")
def fit_cmd(
    cache: Path = typer.Option(..., "--cache", help="The training cache (zs-cache .h5)."),
    source: Optional[str] = typer.Option(None, "--source", help="Source (vision) encoder key; inferred when one."),
    target: Optional[str] = typer.Option(None, "--target", help="Target (CLIP) encoder key; inferred when one."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="The target's text vocabulary (class names for "
                                        "distillation), when it holds several."),
    method: Optional[str] = unset(FitConfig, "--method", "zoomshot | linear-aligner | ridge | procrustes "
                                  "({})."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default: zoomshot from the row count, "
                                         "at least 600 steps; linear-aligner 6)."),
    fraction: Optional[float] = unset(FitConfig, "--fraction", "Seeded share of the usable rows to train "
                                      "on ({})."),
    seed: Optional[int] = unset(FitConfig, "--seed", "Seed for the row sample, the held-out rows, the batch "
                                "order and the init ({})."),
    out: Optional[Path] = typer.Option(None, "--out", help="Mapping folder to write "
                                       "(default: mappings/CACHE-METHOD)."),
    holdout: Optional[float] = unset(FitConfig, "--holdout", "Share of the rows held out for label-free "
                                     "validation and early stopping (at least 256 rows; 0 turns it "
                                     "off; {})."),
    lambda_align: Optional[float] = unset(FitConfig, "--lambda-align", "Weight of L_align (0 turns it "
                                          "off; {})."),
    lambda_cycle: Optional[float] = unset(FitConfig, "--lambda-cycle", "Weight of L_cycle (0 turns it "
                                          "off; {})."),
    lambda_kd: Optional[float] = unset(FitConfig, "--lambda-kd", "Weight of L_kd, the τ²-scaled "
                                       "distillation (0 turns it off; {})."),
    tau: Optional[float] = unset(FitConfig, "--tau", "Distillation temperature τ ({})."),
    kd: Optional[str] = unset(FitConfig, "--kd", "Distillation target: soft (KL to the teacher's softmax), "
                              "hard (its argmax) or lm (MSE of the logits) ({})."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Rows per step (default: zoomshot "
                                             "from the row count, linear-aligner 100)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate, cosine-annealed to 0 "
                                       "(default: zoomshot 0.1 Adam, relative to each tensor's size in the "
                                       "ridge solution; linear-aligner 0.01 SGD)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adam | sgd (default: per method)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Weight decay (default: per method)."),
    init: Optional[str] = unset(FitConfig, "--init", "zoomshot start: ridge (closed form) or random ({})."),
    la_variance: Optional[float] = unset(FitConfig, "--la-variance", "linear-aligner: the per-entry variance "
                                         "each side is scaled to ({})."),
    ridge_lambda: Optional[float] = typer.Option(None, "--ridge-lambda", help="Ridge penalty, relative to the "
                                                 "standardised feature variance (default: chosen by "
                                                 "leave-one-out error)."),
    device: Optional[str] = unset(FitConfig, "--device", f"{DEVICE_HELP} ({{}})"),
    memory_budget: Optional[str] = unset(FitConfig, "--memory-budget", "Float32 rows held in memory at "
                                         "once ({} bytes); a cache needing more is streamed in blocks "
                                         "(bytes, or 512M, 4G)."),
    quiet: bool = typer.Option(False, "--quiet", help="No per-epoch lines or progress bar."),
):
    """Fit a mapping from the source encoder's features into CLIP's space; write it to --out."""
    from zoomshot.fit import fit_cache
    from zoomshot.mapping import check_mapping_out, save_mapping

    cfg = FitConfig(**given(
        method=method, epochs=epochs, fraction=fraction, seed=seed, source=source, target=target, vocab=vocab,
        lambda_align=lambda_align, lambda_cycle=lambda_cycle, lambda_kd=lambda_kd, tau=tau, kd=kd,
        batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay, init=init,
        la_variance=la_variance, ridge_lambda=ridge_lambda, holdout=holdout, device=device,
        memory_budget=None if memory_budget is None else _parse_bytes(memory_budget)))
    cfg.validate()
    if not cache.is_file():
        raise ZsError(f"no cache at {cache}")
    out = check_mapping_out(out or Path("mappings") / f"{cache.stem}-{cfg.method}")  # before the fit
    m = fit_cache(cache, cfg, progress=None if quiet else _print_epoch, bar=not quiet)
    save_mapping(m, out)
    r = m.run
    for w in r.get("warnings") or []:
        typer.echo(f"warning: {w}", err=True)
    sched = r.get("schedule") or {}
    steps = f", {sched['steps']} steps (kept epoch {sched['best_epoch']})" if sched else ""
    typer.echo(f"wrote {out}: {r['method']} {r['source']['key']} -> {r['target']['key']}, "
               f"{r['rows']['used']} rows{' (streamed)' if r['rows']['streamed'] else ''}, "
               f"{r['epochs']} epochs{steps}, {r['wall_time_s']:.1f} s" + _held_text(r["holdout"]["final"]))
    if r.get("diverged"):  # written, so it can be inspected, but the run did not do its job
        typer.echo(f"error: the fit diverged; {out} is not to be trusted (see warnings in its run.json)", err=True)
        raise typer.Exit(1)


def _held_text(held: dict | None) -> str:
    if not held:
        return ""
    agree = "" if held.get("agreement") is None else f"agreement {100 * held['agreement']:.1f}%, "
    return f"; held-out ({held['rows']} rows): {agree}cosine {held['cosine']:.3f}, R² {held['r2']:.3f}"


def _print_epoch(rec: dict) -> None:
    terms = ", ".join(f"{k} {rec[k]:.5g}" for k in ("align", "cycle", "kd") if rec.get(k))
    loss = f": loss {rec['loss']:.5g}" + (f" ({terms})" if terms else "") if "loss" in rec else " (start)"
    typer.echo(f"epoch {rec['epoch']}/{rec['epochs']}{loss}" + _held_text(rec.get("holdout")))


@command("synth")
def synth_cmd(
    out: Path = typer.Option(..., "--out", help="Prefix: writes PREFIX-train.h5 and PREFIX-test.h5."),
    rows: Optional[int] = unset(SynthParams, "--rows", "Training rows ({})."),
    test_rows: Optional[int] = unset(SynthParams, "--test-rows", "Test rows ({})."),
    classes: Optional[int] = unset(SynthParams, "--classes", "Classes in the world (and its "
                                   "vocabulary; {})."),
    dv: Optional[int] = unset(SynthParams, "--dv", "Vision feature dimension ({})."),
    d: Optional[int] = unset(SynthParams, "--d", "CLIP embedding dimension ({})."),
    noise: Optional[float] = unset(SynthParams, "--noise", "Vision-only noise (reference units; see "
                                   "zoomshot.synth; {})."),
    seed: Optional[int] = unset(SynthParams, "--seed", "Seed of the world and its samples ({})."),
    spread: Optional[float] = typer.Option(None, "--spread", help="Within-class spread shared by both encoders."),
    clip_noise: Optional[float] = typer.Option(None, "--clip-noise", help="CLIP-only noise."),
    mismatch: Optional[float] = typer.Option(None, "--mismatch", help="Per-class offsets only the vision "
                                             "encoder has (generator offset)."),
    generator: Optional[str] = unset(SynthParams, "--generator", "offset (vision has class offsets CLIP "
                                     "lacks) or warped (no offsets; partial, nonlinear view; {})."),
    overlap: Optional[float] = typer.Option(None, "--overlap", help="warped: share of the semantics the "
                                            f"vision encoder sees (default {WARPED_DEFAULTS['overlap']})."),
    warp: Optional[float] = typer.Option(None, "--warp", help="warped: strength of the nonlinearity "
                                         f"(default {WARPED_DEFAULTS['warp']})."),
):
    """Write a planted-world train/test cache pair whose teacher accuracy is known."""
    from zoomshot.synth import write_synth_world

    w = write_synth_world(out, **given(rows=rows, test_rows=test_rows, classes=classes, dv=dv, d=d, noise=noise,
                                       seed=seed, spread=spread, clip_noise=clip_noise, mismatch=mismatch,
                                       generator=generator, overlap=overlap, warp=warp))
    p = w["params"]
    typer.echo(f"wrote {w['train']} ({p['rows']} rows) and {w['test']} ({p['test_rows']} rows); CLIP teacher top-1: "
               f"train {100 * w['teacher_acc_train']:.2f}%, test {100 * w['teacher_acc_test']:.2f}%")


# ---------------------------------------------------------------- evaluate / sweep ---------
# (section owned by the evaluate stage)
def _print_skipped(skipped: list[dict]) -> None:
    for s in skipped:
        typer.echo(f"skipped: {s['mapping']} on {s['cache']}: {s['reason']}", err=True)


@command("evaluate")
def evaluate_cmd(
    mapping: List[Path] = typer.Option([], "--mapping", help="A mapping folder (from zs fit); repeat for several."),
    cache: List[Path] = typer.Option(..., "--cache", help="An evaluation cache; repeat for several."),
    out: Path = typer.Option(Path("reports"), "--out", help="Folder for results.json/.csv, report.md and plots."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="The caches' text vocabulary to classify with, "
                                        "when a CLIP encoder holds several."),
    per_class: bool = typer.Option(False, "--per-class", help="Add a per-class recall table to each record."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Keep records already in OUT/results.json "
                                       "and compute only the missing ones."),
    retrieval: bool = typer.Option(False, "--retrieval", help="Also leave-one-out k-NN accuracy and text-to-image "
                                   "recall@1/5/10 (faiss; holds each scored encoder's features in memory)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar (shown for caches of more than one chunk)."),
    format_: List[str] = typer.Option([], "--format", help="Also write another tool's format: clip_benchmark "
                                      "(one JSON per dataset and model in OUT/clip_benchmark/, for its `build`)."),
):
    """Score mappings (and CLIP itself) zero-shot on evaluation caches; write a report."""
    from zoomshot.evaluate.run import EvaluateConfig, run_evaluate, summary_lines

    res = run_evaluate(EvaluateConfig([str(m) for m in mapping], [str(c) for c in cache], out, vocab=vocab,
                                      per_class=per_class, skip_existing=skip_existing, retrieval=retrieval,
                                      progress=not quiet, formats=tuple(format_)))
    _print_skipped(res.skipped)
    if res.kept:
        typer.echo(f"kept {res.kept} records already in {out / 'results.json'}")
    for line in summary_lines(res.new):
        typer.echo(line)
    if retrieval:
        for r in res.new:  # the retrieval metrics are in results.json; one line each here
            m = r["metrics"]
            typer.echo(f"retrieval {r['dataset']} {r['mapping_name'] or 'CLIP'}: "
                       + ", ".join(f"{k} {'–' if v is None else f'{100 * v:.1f}'}" for k, v in m.items()
                                   if k.startswith(("knn", "t2i_"))))
    cb = [p for p in res.paths if p.startswith("clip_benchmark/")]
    names = [Path(p).name for k, p in res.paths.items() if not k.startswith("clip_benchmark/")]
    typer.echo(f"wrote {', '.join(names)}{f' and {len(cb)} clip_benchmark JSON files' if cb else ''} to {out}")
    if res.failed:
        raise ZsError(res.failed)


@command("sweep")
def sweep_cmd(
    cache: List[Path] = typer.Option(..., "--cache", help="A training cache; repeat for several."),
    eval_: List[Path] = typer.Option(..., "--eval", help="An evaluation cache; repeat for several."),
    epochs: Optional[str] = unset(SweepConfig, "--epochs", "Comma-separated epoch counts ({})."),
    fractions: Optional[str] = unset(SweepConfig, "--fractions", "Comma-separated training fractions ({})."),
    method: List[str] = typer.Option([], "--method", help="Method(s) to fit (repeat or comma-separate); "
                                     "default: the fit stage's default."),
    out: Path = typer.Option(..., "--out", help="Folder for the report, the heatmap and the fitted mappings."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="The evaluation caches' vocabulary, when several."),
    train_vocab: Optional[str] = typer.Option(None, "--train-vocab", help="The training caches' vocabulary "
                                              "(for distillation), when several."),
    source: Optional[str] = typer.Option(None, "--source", help="Source (vision) encoder key; inferred when one."),
    target: Optional[str] = typer.Option(None, "--target", help="Target (CLIP) encoder key; inferred when one."),
    seed: Optional[int] = unset(FitConfig, "--seed", "Seed for the row sample and initialisation ({})."),
    device: Optional[str] = unset(FitConfig, "--device", f"Device to fit on: {DEVICE_HELP} ({{}})"),
    holdout: Optional[float] = unset(FitConfig, "--holdout", "Share of each training cache held out "
                                     "for label-free validation (0 turns it off; {})."),
    select: bool = typer.Option(False, "--select", help="Name the cell with the best held-out agreement "
                                "(label-free) in the report, beside the best labelled one."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar over the cells."),
):
    """Fit every epochs × fractions (× method) cell and evaluate each; write the report and a heatmap."""
    from zoomshot.sweep import parse_list, run_sweep

    methods = [m for spec in method for m in spec.split(",") if m] or None
    fit_cfg = FitConfig(**given(seed=seed, source=source, target=target, vocab=train_vocab, device=device,
                                holdout=holdout))
    cfg = SweepConfig(train_caches=[str(c) for c in cache], eval_caches=[str(e) for e in eval_],
                      out_dir=str(out), methods=methods, vocab=vocab, fit=fit_cfg, select=select, quiet=quiet,
                      **given(epochs=epochs and parse_list(epochs, int, "--epochs"),
                              fractions=fractions and parse_list(fractions, float, "--fractions")))
    res = run_sweep(cfg, progress=typer.echo)
    for sel in (res.selection or {}).values():
        pick, best = sel["by_holdout"], sel["by_label"]
        typer.echo(f"selected on {sel['dataset']} (label-free): {pick['mapping_name']}, held-out agreement "
                   f"{100 * pick['holdout']['agreement']:.1f}%, acc1 {100 * pick['metrics']['acc1']:.1f}% "
                   f"(best acc1 of the sweep: {100 * best['metrics']['acc1']:.1f}%)")
    _print_skipped(res.skipped)
    typer.echo(f"wrote {', '.join(Path(p).name for p in res.paths.values())} to {out}")


# ---------------------------------------------------------------- predict / search / export -
# (section owned by the use-the-model work)
_LABELS_HELP = 'Comma-separated class names, e.g. "cat,dog,bird" (embedded by the mapping\'s CLIP text tower).'
_VOCAB_HELP = "A built-in vocabulary (zoomshot/vocabularies) or a vocabulary .json file, embedded by CLIP's text tower."
_FROM_CACHE_HELP = "Take class names and text embeddings stored in this cache by the mapping's CLIP encoder (no CLIP loads)."
_WEIGHTS_HELP = "Vision encoder weights instead of run.json's: default, random, or a local file."
_TEXT_WEIGHTS_HELP = "CLIP text tower weights instead of run.json's: default, random, or a local file."


@command("predict")
def predict_cmd(
    images: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    mapping: Path = typer.Option(..., "--mapping", help="A mapping folder (from zs fit)."),
    labels: Optional[str] = typer.Option(None, "--labels", help=_LABELS_HELP),
    vocab: Optional[str] = typer.Option(None, "--vocab", help=_VOCAB_HELP),
    from_cache: Optional[Path] = typer.Option(None, "--from-cache", help=_FROM_CACHE_HELP),
    cache_vocab: Optional[str] = typer.Option(None, "--cache-vocab", help="Which stored vocabulary of --from-cache, when several."),
    top_k: int = typer.Option(5, "--top-k", help="Labels shown per image."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per image instead of a table."),
    weights: Optional[str] = typer.Option(None, "--weights", help=_WEIGHTS_HELP),
    text_weights: Optional[str] = typer.Option(None, "--text-weights", help=_TEXT_WEIGHTS_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
):
    """Classify images zero-shot with a mapping: top-k labels and probabilities per image.

    Unreadable images get a line saying so; the others go on, and the exit code is 1 if any failed."""
    import json

    from zoomshot.model import choose_labels, load, parse_labels, predict_files

    if top_k < 1:
        raise ZsError(f"--top-k must be at least 1 (got {top_k})")
    clf = load(mapping, weights=weights, text_weights=text_weights, device=device)
    choose_labels(clf, labels=parse_labels(labels) if labels is not None else None, vocab=vocab,
                  from_cache=from_cache, cache_vocab=cache_vocab)
    results = predict_files(clf, images, top_k=top_k, batch_size=batch_size)
    failed = [r for r in results if "error" in r]
    if as_json:
        for r in results:
            typer.echo(json.dumps(r))
    else:
        wi = max(len(r["image"]) for r in results)
        wl = max(len(lab) for lab in clf.labels)
        k = min(top_k, len(clf.labels))
        typer.echo(f"{'image':<{wi}}  " + "  ".join(f"{f'top-{i + 1}':<{wl}}      p" for i in range(k)))
        for r in results:
            cells = ([f"{t['label']:<{wl}}  {t['prob']:.3f}" for t in r["top"]] if "top" in r
                     else [f"error: {r['error']}"])
            typer.echo(f"{r['image']:<{wi}}  " + "  ".join(cells))
    if failed:
        typer.echo(f"{len(failed)} of {len(results)} images could not be classified", err=True)
        raise typer.Exit(1)


@command("search")
def search_cmd(
    query: str = typer.Argument(..., help="A text query, e.g. \"a photo of a dog\" (with --vocab-query: a class name)."),
    cache: Path = typer.Option(..., "--cache", help="The cache whose images are searched."),
    mapping: Path = typer.Option(..., "--mapping", help="A mapping folder whose source encoder the cache holds."),
    top_k: int = typer.Option(10, "--top-k", help="How many images to list."),
    vocab_query: bool = typer.Option(False, "--vocab-query", help="Look the query up as a class name in the "
                                     "cache's stored vocabulary instead of running CLIP's text tower."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="Which stored vocabulary --vocab-query uses, when several."),
    text_weights: Optional[str] = typer.Option(None, "--text-weights", help=_TEXT_WEIGHTS_HELP),
    ivf_threshold: int = typer.Option(100_000, "--ivf-threshold", help="Above this many rows the index is IVF "
                                      "(approximate) instead of exact."),
    device: str = typer.Option("auto", "--device", help="Where CLIP's text tower embeds the query: " + DEVICE_HELP),
):
    """Text-to-image search over a cache's mapped image features (a faiss index saved beside the cache)."""
    from zoomshot.search import search_cache

    res = search_cache(cache, mapping, query, top_k=top_k, vocab_query=vocab_query, vocab=vocab,
                       text_weights=text_weights, ivf_threshold=ivf_threshold, device=device)
    typer.echo(f"index: {res.index_path} ({'built' if res.built else 'reused'}, {res.kind})", err=True)
    typer.echo(f"{'rank':>4}  {'score':>7}  id")
    for h in res.hits:
        typer.echo(f"{h.rank:>4}  {h.score:>7.4f}  {h.id}")


@command("export")
def export_cmd(
    mapping: Path = typer.Option(..., "--mapping", help="A mapping folder (from zs fit)."),
    out: Path = typer.Option(..., "--out", help="The TorchScript file to write, e.g. model.pt."),
    labels: Optional[str] = typer.Option(None, "--labels", help=_LABELS_HELP),
    vocab: Optional[str] = typer.Option(None, "--vocab", help=_VOCAB_HELP),
    from_cache: Optional[Path] = typer.Option(None, "--from-cache", help=_FROM_CACHE_HELP),
    cache_vocab: Optional[str] = typer.Option(None, "--cache-vocab", help="Which stored vocabulary of --from-cache, when several."),
    weights: Optional[str] = typer.Option(None, "--weights", help=_WEIGHTS_HELP),
    text_weights: Optional[str] = typer.Option(None, "--text-weights", help=_TEXT_WEIGHTS_HELP),
):
    """Export encoder + mapping + a fixed label set as one TorchScript file (no zoomshot needed to run it)."""
    from zoomshot.export import export_model
    from zoomshot.model import parse_labels

    res = export_model(mapping, out, labels=parse_labels(labels) if labels is not None else None, vocab=vocab,
                       from_cache=from_cache, cache_vocab=cache_vocab, weights=weights, text_weights=text_weights)
    if res.note:
        typer.echo(f"note: {res.note}", err=True)
    typer.echo(f"wrote {res.path} ({res.method}, {len(res.labels)} labels, input float32 (B, "
               f"{', '.join(map(str, res.input_shape))}); labels and preprocessing in its zoomshot.json)")


# ---------------------------------------------------------------- demo ---------------------
@command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for images, caches, mappings, reports."),
    pretrained: bool = typer.Option(False, "--pretrained",
                                    help="Real weights (resnet50, clip_vit_b16) from the local hub cache "
                                         "instead of random init."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    world_rows: int = typer.Option(20_000, "--world-rows", help="Training rows of the planted world."),
):
    """The whole pipeline, offline, on built-in data: extract, synth, fit, evaluate, sweep."""
    from zoomshot.demo import run_demo

    run_demo(out, pretrained=pretrained, device=device, world_rows=world_rows, progress=typer.echo)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
