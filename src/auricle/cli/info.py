"""``auricle models``, ``auricle labels`` and ``auricle system``: what is available."""

from __future__ import annotations

import json

import click

from auricle.cli.common import fail
from auricle.errors import AuricleError


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_command(as_json: bool) -> None:
    """List the CED and Dasheng models with their size and published AudioSet mAP."""
    from auricle.models.registry import available_models

    models = available_models(family=None)
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in models], indent=2))
        return
    click.echo(f"{'name':<22} {'params':>8} {'AudioSet mAP':>13}  {'dim':>4}  weights")
    for info in models:
        score = "-" if info.audioset_map is None else f"{info.audioset_map:.1f}"  # an encoder without a head
        weights = f"hf:{info.hf_repo}" if info.hf_repo else info.zenodo_url.split("?")[0]
        click.echo(f"{info.name:<22} {info.parameters_millions:>7.1f}M {score:>13}  "
                   f"{info.config.embed_dim:>4}  {weights}")


@click.command("labels")
@click.argument("query", nargs=-1)
@click.option("--profile", default=None, help="Show the events of a profile (bundled name or TOML file).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--toml", "as_toml", is_flag=True,
              help="With --profile: print the profile's TOML, to save as a file and edit (e.g. its thresholds).")
def labels_command(query: tuple[str, ...], profile: str | None, as_json: bool, as_toml: bool) -> None:
    """List AudioSet classes; QUERY selects by name, MID or ontology subtree (e.g. Animal)."""
    from auricle.labels import audioset_labels, resolve_classes
    from auricle.profiles import available_profiles, load_profile, profile_text

    if as_toml and (profile is None or as_json):
        fail("--toml prints a profile: give it with --profile NAME, without --json")
    labels = audioset_labels()
    try:
        if profile is not None:
            loaded = load_profile(profile)
            if as_toml:
                click.echo(profile_text(profile), nl=False)
                return
            rows = [
                {"label": e.label, "threshold": e.threshold, "classes": [labels[i].name for i in e.class_indices]}
                for e in loaded.events
            ]
            if as_json:
                click.echo(json.dumps({"name": loaded.name, "events": rows}, indent=2))
            else:
                click.echo(f"profile {loaded.name}: {loaded.description}")
                for row in rows:
                    click.echo(f"  {row['label']:<28} {row['threshold']:.2f}  {'; '.join(row['classes'])}")
            return
        indices = resolve_classes(list(query), labels) if query else list(range(len(labels)))
    except AuricleError as error:
        fail(str(error))
    if as_json:
        click.echo(json.dumps([{"index": i, "mid": labels[i].mid, "label": labels[i].name} for i in indices], indent=2))
        return
    for i in indices:
        click.echo(f"{i:>4}  {labels[i].mid:<12} {labels[i].name}")
    if not query:
        click.echo(f"({len(indices)} classes; bundled profiles: {', '.join(available_profiles())})", err=True)


@click.command("system")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def system_command(as_json: bool) -> None:
    """Show this machine's CPU and how each engine and precision would run on it.

    Also the defaults auricle picks here: threads, streams, batch size and what
    --precision auto chooses. Include it in bug reports about speed.
    """
    from auricle.inference.system import system_report

    report = system_report()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    flags = ", ".join(f"{name}: {'yes' if present else 'no'}" for name, present in
                      [("AVX2", report.avx2), ("VNNI", report.vnni), ("native bf16", report.native_bf16),
                       ("AMX", report.amx)])
    rows = [
        ("cpu", f"{report.cpu} ({report.cores} usable cores)"),
        ("vector isa", f"{report.vector_isa} ({flags})"),
        ("torch", report.torch),
        ("onnxruntime", report.onnxruntime or "not installed (pip install 'auricle[onnx]')"),
        ("defaults", f"{report.threads} threads, {report.streams} streams, batch {report.batch_size}"),
        ("--precision auto", ", ".join(f"{engine}: {precision}" for engine, precision in report.auto_precision.items())),
        ("training auto", f"{report.training_precision} (finetune, distill train on the CPU)"),
        ("engine cache", f"{report.cache_dir} ({report.prepared_graphs} prepared for --engine onnx)"),
        ("freed memory", report.freed_memory),
        ("exported files", report.exported_files),
    ]
    for key, value in rows:
        click.echo(f"{key:<17} {value}")
    click.echo("")
    click.echo(f"{'engine':<11} {'runs as':<58} note")
    for route in report.routes:
        click.echo(f"{route.label:<11} {route.route if route.available else 'unavailable':<58} {route.note}".rstrip())
