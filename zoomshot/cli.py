"""The `zs` command line: one typer app, thin commands over library functions.

Each command parses options and calls one library function. Heavy imports (torch, open_clip,
timm, faiss, matplotlib) happen inside the commands, so `zs --help` answers fast. A `ZsError`
raised below becomes a one-line `error: ...` on stderr and exit code 2.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from zoomshot.errors import ZsError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="zoomshot: CLIP's zero-shot ability for any vision encoder, through a feature cache.",
)
cache_app = typer.Typer(no_args_is_help=True, help="Inspect cache files.")
app.add_typer(cache_app, name="cache")


def command(typer_app: typer.Typer = app, name: str | None = None):
    """Register a command whose ZsError turns into one line on stderr and exit code 2."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ZsError as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2) from None

        return typer_app.command(name=name)(run)

    return wrap


# ---------------------------------------------------------------- cache --------------------
@command(cache_app, name="info")
def cache_info(path: Path = typer.Argument(..., help="A zs-cache .h5 file.")):
    """Say what a cache holds, in a few lines."""
    from zoomshot.cache import open_cache

    with open_cache(path) as c:
        typer.echo(c.info())


# ---------------------------------------------------------------- encoders / extract ---------
@command(name="encoders")
def encoders_cmd():
    """List the encoder aliases, their specs and families (any timm:/open_clip:/py: spec works too)."""
    from zoomshot.encoders import SPEC_HELP, list_encoders

    rows = list_encoders()
    w = max(len(r["alias"]) for r in rows)
    ws = max(len(r["spec"]) for r in rows)
    for r in rows:
        typer.echo(f"{r['alias']:<{w}}  {r['family']:<6}  {r['spec']:<{ws}}  {r['description']}")
    typer.echo(f"\nA spec is {SPEC_HELP}.")

# (section owned by the extract stage)
@command(name="extract")
def extract_cmd(
    images: Optional[str] = typer.Option(None, "--images", help="ImageFolder tree, flat folder, .txt/.csv list "
                                         "(path[,label]) or WebDataset tars ('data/shard-{00000..00099}.tar')."),
    encoder: List[str] = typer.Option(..., "--encoder", help="Encoder spec (repeat for several; see `zs encoders`)."),
    out: Path = typer.Option(..., "--out", help="Cache file, e.g. cache/NAME.h5 (shards go to cache/NAME.shards/)."),
    fraction: float = typer.Option(1.0, "--fraction", help="Seeded random subset, stratified when labelled."),
    seed: int = typer.Option(0, "--seed"),
    vocab: List[str] = typer.Option([], "--vocab", help="Vocabulary for CLIP encoders: built-in name, 'classes' "
                                    "or FILE.json (repeatable; default: the source's classes, else imagenet1k)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode workers (default from the core count)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A torchvision dataset read from --root "
                                          "(cifar10, cifar100, stl10, food101, pets, flowers102, caltech101, dtd, "
                                          "eurosat, imagenet1k); never downloaded."),
    root: Optional[str] = typer.Option(None, "--root", help="Folder holding the --dataset copy."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split (default: test, or the only one)."),
    num_shards: int = typer.Option(1, "--num-shards", help="Job-array size: this run does 1/K of the rows."),
    shard_index: int = typer.Option(0, "--shard-index", help="This job's index in 0..K-1."),
    shard_rows: Optional[int] = typer.Option(None, "--shard-rows", help="Rows per shard file (fixed by the first run)."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on CUDA), fp32, bf16, fp16."),
    decode: str = typer.Option("cpu", "--decode", help="cpu (PIL in workers) or gpu (JPEGs decoded on the device)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the image encoders."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress line."),
):
    """Run encoders over images once and write their embeddings (and CLIP text vocabularies) to a cache."""
    from zoomshot.extract.runner import ExtractConfig, extract

    summary = extract(ExtractConfig(
        out=str(out), encoders=list(encoder), images=images, dataset=dataset, root=root, split=split,
        fraction=fraction, seed=seed, vocabs=list(vocab), batch_size=batch_size, device=device, workers=workers,
        precision=precision, decode=decode, compile=compile, num_shards=num_shards, shard_index=shard_index,
        shard_rows=shard_rows, progress=not quiet))
    typer.echo(summary.text(), err=True)



# ---------------------------------------------------------------- fit / synth --------------
# (section owned by the fit stage)


# ---------------------------------------------------------------- evaluate / sweep ---------
# (section owned by the evaluate stage)
def _print_skipped(skipped: list[dict]) -> None:
    for s in skipped:
        typer.echo(f"skipped: {s['mapping']} on {s['cache']}: {s['reason']}", err=True)


@command(name="evaluate")
def evaluate_cmd(
    mapping: List[Path] = typer.Option([], "--mapping", help="A mapping folder (from zs fit); repeat for several."),
    cache: List[Path] = typer.Option(..., "--cache", help="An evaluation cache; repeat for several."),
    out: Path = typer.Option(Path("reports"), "--out", help="Folder for results.json/.csv, report.md and plots."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="The caches' text vocabulary to classify with, "
                                        "when a CLIP encoder holds several."),
    per_class: bool = typer.Option(False, "--per-class", help="Add a per-class recall table to each record."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Keep records already in OUT/results.json "
                                       "and compute only the missing ones."),
):
    """Score mappings (and CLIP itself) zero-shot on evaluation caches; write a report."""
    from zoomshot.evaluate.run import run_evaluate, summary_lines

    res = run_evaluate([str(m) for m in mapping], [str(c) for c in cache], out, vocab=vocab,
                       per_class=per_class, skip_existing=skip_existing)
    _print_skipped(res.skipped)
    if res.kept:
        typer.echo(f"kept {res.kept} records already in {out / 'results.json'}")
    for line in summary_lines(res.new):
        typer.echo(line)
    typer.echo(f"wrote {', '.join(Path(p).name for p in res.paths.values())} to {out}")


@command(name="sweep")
def sweep_cmd(
    cache: List[Path] = typer.Option(..., "--cache", help="A training cache; repeat for several."),
    eval_: List[Path] = typer.Option(..., "--eval", help="An evaluation cache; repeat for several."),
    epochs: str = typer.Option("1,5,20", "--epochs", help="Comma-separated epoch counts."),
    fractions: str = typer.Option("0.01,0.05,0.2", "--fractions", help="Comma-separated training fractions."),
    method: List[str] = typer.Option([], "--method", help="Method(s) to fit (repeat or comma-separate); "
                                     "default: the fit stage's default."),
    out: Path = typer.Option(..., "--out", help="Folder for the report, the heatmap and the fitted mappings."),
    vocab: Optional[str] = typer.Option(None, "--vocab", help="The evaluation caches' vocabulary, when several."),
):
    """Fit every epochs × fractions (× method) cell and evaluate each; write the report and a heatmap."""
    from zoomshot.evaluate.sweep import SweepConfig, parse_list, run_sweep

    methods = [m for spec in method for m in spec.split(",") if m] or None
    cfg = SweepConfig(train_caches=[str(c) for c in cache], eval_caches=[str(e) for e in eval_],
                      epochs=parse_list(epochs, int, "--epochs"),
                      fractions=parse_list(fractions, float, "--fractions"),
                      out_dir=str(out), methods=methods, vocab=vocab)
    res = run_sweep(cfg, progress=typer.echo)
    _print_skipped(res.skipped)
    typer.echo(f"wrote {', '.join(Path(p).name for p in res.paths.values())} to {out}")


# ---------------------------------------------------------------- predict / search / export -
# (section owned by the use-the-model work)


# ---------------------------------------------------------------- demo ---------------------
# (section owned by the demo)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
