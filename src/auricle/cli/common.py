"""Options and helpers shared by the commands."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import click

from auricle.engines.config import ENGINES, PRECISION_CHOICES
from auricle.errors import AuricleError
from auricle.models.registry import DEFAULT_MODEL
from auricle.options import OptionSpec


def error_line(message: str) -> str:
    """``auricle: error: MESSAGE`` as one line: a newline in a file's name would split it."""
    return "auricle: error: " + message.replace("\r", "\\r").replace("\n", "\\n")


def audio_warnings(result) -> list[str]:
    """``auricle: warning: ...`` lines for a result computed from less than a whole, long enough recording."""
    from auricle.audio import Truncation
    from auricle.inference.results import PATCH_SECONDS

    lines = []
    if getattr(result, "truncated", False) and result.declared_duration is not None:
        lines.append(Truncation(result.declared_duration, result.duration).message(result.file))
    if getattr(result, "too_short", False):
        lines.append(f"{result.file}: {result.duration:.3f} s is shorter than one patch ({PATCH_SECONDS} s); "
                     "scored zero-padded, its scores say little")
    return ["auricle: warning: " + line.replace("\r", "\\r").replace("\n", "\\n") for line in lines]


def say_audio_warnings() -> None:
    """Show each :class:`~auricle.errors.AudioWarning` (raised where decoding runs, a thread) as one
    ``auricle: warning:`` line on stderr, not Python's two-line form."""
    from auricle.errors import AudioWarning

    shown = warnings.showwarning
    if getattr(shown, "auricle_audio", False):
        return

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, AudioWarning):
            click.echo(f"auricle: warning: {message}".replace("\r", "\\r").replace("\n", "\\n"), err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show.auricle_audio = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.simplefilter("always", AudioWarning)  # one line per file, not once per place in the code


def strict_option(what: str):
    return click.option("--strict", is_flag=True,
                        help=f"Exit with status 1 if any file was truncated or shorter than one patch (0.15 s); "
                             f"such files are still {what} (and flagged) either way.")


def fail(message: str, code: int = 2) -> None:
    """Print one line on stderr and exit."""
    click.echo(error_line(message), err=True)
    sys.exit(code)


def output_problem(path: str, folder: bool = False) -> str | None:
    """Why ``path`` cannot be written as a file (``folder``: as a folder); None if nothing shows yet.

    Checked before any work, so a typo costs no export or training; what only writing can
    show (a full disk) is reported when it happens (:func:`auricle.cli.main`).
    """
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        return f"{path}: exists and is not a folder"
    if not folder and target.is_dir():
        return f"{path}: is a folder; give a file name"
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{path}: {existing} is a file, not a folder"
    if target.exists() and not target.is_dir() and not os.access(target, os.W_OK):
        return f"{path}: not writable"
    if not target.exists() and not os.access(existing, os.W_OK | os.X_OK):
        return f"{path}: cannot create it in {existing} (permission denied)"
    return None


def refuse_standard_input(paths, command: str) -> None:
    """``-`` names standard input elsewhere; here it would only be a missing file called '-'."""
    if "-" in paths and not os.path.exists("-"):
        fail(f"-: {command} reads files, folders and globs, not standard input; for a live stream use "
             "`auricle listen -`")


def writable(folder: bool = False) -> Callable:
    """A click callback that refuses, in one line, an output ``path`` that cannot be written ('-': stdout)."""

    def check(ctx: click.Context, param: click.Parameter, value):
        if value is not None and value != "-":
            problem = output_problem(str(value), folder)
            if problem is not None:
                fail(problem)
        return value

    return check


def model_options(command: Callable) -> Callable:
    """--model, --checkpoint, --device, --threads, --streams, --engine, --precision.

    --streams, --engine and --precision are not passed to the command: they are kept in the
    click context and read by :func:`load_model_or_exit`, so every command built
    on these options gets them without changing its signature.
    """
    command = click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="fp32",
                           show_default=True, expose_value=False, callback=_remember, envvar="AURICLE_PRECISION",
                           show_envvar=True,
                           help="Encoder arithmetic: bf16 is fast on CPUs with avx512_bf16/AMX, int8 with VNNI (and faster "
                                "than fp32 with AVX2); "
                                "auto picks the fastest this CPU supports (results shift slightly, see docs/deploy.md).")(command)
    command = click.option("--engine", type=click.Choice(ENGINES), default="torch", show_default=True,
                           expose_value=False, callback=_remember, envvar="AURICLE_ENGINE", show_envvar=True,
                           help="Who runs the model: PyTorch, or ONNX Runtime (exported once, then cached; commands "
                                "that only tag or embed then start without torch).")(command)
    command = click.option("--streams", type=click.IntRange(1), default=None, expose_value=False,
                           callback=_remember,
                           help="Parts of a batch run at once, each on threads/streams threads [default: one per "
                                "thread]. 1 gives the lowest latency for single clips with --engine onnx.")(command)
    command = click.option("--threads", type=click.IntRange(1), default=None,
                           help="CPU threads for the model [default: one per usable core].")(command)
    command = click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")(command)
    command = click.option("--checkpoint", type=click.Path(dir_okay=True), default=None,
                           help="Weights file or folder (Zenodo .pt, Hugging Face folder, auricle .safetensors); tag, "
                           "evaluate, serve, listen and embed also take an `auricle export` .onnx file (run by ONNX Runtime, no "
                           "torch).")(command)
    command = click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True, callback=known_model,
                           help="Model name (see `auricle models`).")(command)
    return command


def known_model(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--model``'s name checked against the registry, which is data: a typo is answered before torch loads."""
    from auricle.models.registry import model_info

    try:
        model_info(value)
    except AuricleError as error:
        raise click.BadParameter(str(error), ctx, param) from None
    return value


def training_precision_option(command: Callable) -> Callable:
    """``--precision auto|fp32|bf16`` of the training commands (auricle.devices.training_bf16)."""
    from auricle.inference.tuning import TRAINING_PRECISIONS  # torch-free: help must work without torch

    return click.option(
        "--precision", type=click.Choice(TRAINING_PRECISIONS), default="auto", show_default=True,
        help="auto: bf16 autocast on GPUs that support it and on CPUs with bf16 instructions "
             "(avx512_bf16 or AMX), else fp32. The log-mel, loss and weights stay float32.",
    )(command)


def tag_option_flags(specs: Mapping[str, OptionSpec], *names: str) -> Callable:
    """Click options for the tagging options ``names`` (all of ``specs`` if none), in that order.

    Flags, defaults, bounds, choices and help come from the one declaration in
    :mod:`auricle.options`, which the service's parameters are built from too.
    """

    def decorate(command: Callable) -> Callable:
        for name in reversed(names or tuple(specs)):
            command = _click_option(specs[name])(command)
        return command

    return decorate


def _click_option(spec: OptionSpec) -> Callable:
    declarations = [spec.flag] + ([spec.short] if spec.short else []) + [spec.name]
    if spec.kind is bool:
        return click.option(*declarations, is_flag=True, default=spec.default, help=spec.help)
    if spec.choices:
        kind = click.Choice(list(spec.choices))
    elif spec.kind is int:
        kind = click.IntRange(spec.minimum, spec.maximum)
    elif spec.kind is float:
        kind = click.FloatRange(spec.minimum, spec.maximum)
    else:
        kind = None
    return click.option(*declarations, type=kind, default=spec.default, multiple=spec.multiple, help=spec.help,
                        show_default=spec.default is not None and not spec.multiple)


def _remember(ctx: click.Context, param: click.Parameter, value):
    ctx.meta[f"auricle.{param.name}"] = value
    return value


#: What each command needs of a model's family (auricle.models.families); the rest (search's
#: subcommands) index results, which only CED models do so far. The loading path refuses a family without it.
NEEDS = {"tag": {"tags"}, "evaluate": {"tags"}, "serve": {"tags"}, "embed": {"embeds"}, "probe": {"embeds"},
         "finetune": {"trains"}, "export": {"exports"}, "listen": {"listens"}}
OTHER_COMMANDS_NEED = {"indexes"}


def accepts(ctx: click.Context | None, exported: bool):
    """What the running command can use (:class:`auricle.loading.Accepts`)."""
    from auricle.loading import Accepts

    command = ctx.info_name if ctx is not None else "this command"
    return Accepts(frozenset(NEEDS.get(command, OTHER_COMMANDS_NEED)), exported, command)


def load_model_or_exit(model_name: str, checkpoint: str | None, device: str, threads: int | None,
                       engine: str | None = None, precision: str | None = None, exported: bool = False):
    """The model the options name (:func:`auricle.loading.load`), or one error line and exit.

    ``exported``: the command accepts an ``auricle export`` file as ``--checkpoint``
    (it cannot train), and with ``--engine onnx`` runs the model as one prepared graph;
    either way it then runs through ONNX Runtime without importing torch.
    """
    from auricle.errors import EngineWarning
    from auricle.loading import RunOptions, load

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    caught: list = []
    try:
        options = RunOptions.from_flags(
            device, threads, meta.get("auricle.streams"), engine or meta.get("auricle.engine", "torch"),
            precision or meta.get("auricle.precision", "fp32"), engine_given=given_on_command_line(ctx, "engine"),
            precision_given=given_on_command_line(ctx, "precision"), prefer_graph=exported)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EngineWarning)
            model = load(model_name, checkpoint, options, accepts=accepts(ctx, exported),
                         name_given=given_on_command_line(ctx, "model_name"),
                         announce=lambda line: click.echo(f"auricle: {line}", err=True))
    except AuricleError as error:
        _say_warnings(caught)  # what was said on the way (a graph that could not be prepared) comes first
        fail(str(error))
    note = getattr(model, "cost_note", lambda: None)()
    if note:  # before the long job, not after it
        click.echo(f"auricle: note: {note}", err=True)
    _say_warnings(caught)
    return model


def _say_warnings(caught: list) -> None:
    from auricle.errors import EngineWarning

    for warning in caught:
        if issubclass(warning.category, EngineWarning):
            click.echo(f"auricle: warning: {warning.message}", err=True)
        else:  # not ours to format: hand it back unchanged
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)


def names_a_language_model(model_name: str, checkpoint: str | None) -> bool:
    """Whether the options name an audio-language model (a registered name, or a model folder); False for an
    unknown name (reported where the model is loaded)."""
    from auricle.loading import family_named

    family = family_named(model_name, checkpoint)
    return family is not None and "describes" in family.capabilities


def given_on_command_line(ctx: click.Context | None, name: str) -> bool:
    """Whether the user set option ``name`` on the command line (defaults, AURICLE_* included, yield to a file)."""
    if ctx is None:
        return False
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE



def report_batch(verb: str, files: list, todo: list, failures: int, resume: bool, output: str | None,
                 strict_flagged: int = 0) -> None:
    """The closing line of a batch command on stderr; exit status 1 when any file failed, or when
    ``strict_flagged`` files were cut short or too short under ``--strict``."""
    skipped = f", {len(files) - len(todo)} already done" if resume else ""
    summary = f"{verb} {len(todo) - failures} of {len(todo)} files{skipped}"
    if failures:
        click.echo(f"auricle: {summary}; {failures} failed", err=True)
        raise SystemExit(1)
    if strict_flagged:
        click.echo(f"auricle: {summary}; {strict_flagged} truncated or too short (--strict)", err=True)
        raise SystemExit(1)
    if len(todo) > 1 or output is not None:
        click.echo(f"auricle: {summary}", err=True)


def files_or_exit(paths, recursive: bool, output: str | None, command: str, files_from: str | None = None,
                  shard=None, before_empty_shard: Callable[[], None] | None = None) -> list[str]:
    """The audio files ``paths`` and ``--files-from`` name (folders searched, globs expanded), of ``--shard``,
    not the output; or one error line and exit."""
    files = gather_files_or_exit(paths, files_from, shard, recursive, command, before_empty_shard)
    if output is not None and output != "-":
        _refuse_an_input_as_output(output, files, command)
    return files


def _refuse_an_input_as_output(output: str, files: list[str], command: str) -> None:
    """``-o x1.wav x2.wav`` meant two recordings: writing results there would destroy one."""
    from auricle.audio import AUDIO_EXTENSIONS

    suffix = os.path.splitext(output)[1].lower()
    if suffix in AUDIO_EXTENSIONS:
        fail(f"{output}: --output takes the results file, not a {suffix} recording; to {command} it, list it without -o")
    if os.path.exists(output):
        real = os.path.realpath(output)
        if any(os.path.realpath(file) == real for file in files):
            fail(f"{output}: is one of the files to {command}; write the results to another file")


def _shard(ctx: click.Context, param: click.Parameter, value):
    from auricle.filelists import Shard

    if value is None:
        return None
    try:
        return Shard.parse(value)
    except AuricleError as error:
        fail(str(error))


def file_selection_options(command: Callable) -> Callable:
    """``--files-from`` and ``--shard``: the files of a scale-out worker (auricle.filelists, docs/search.md)."""
    command = click.option("--shard", default=None, callback=_shard, metavar="K/N",
                           help="Only the files of shard K of N (1-based; a stable split by a hash of each path as "
                                "listed): N workers with K = 1..N cover every file once.")(command)
    return click.option("--files-from", default=None, metavar="FILE",
                        help="Also the files listed in FILE, one a line ('-': standard input; blank lines and "
                             "# comments skipped; relative paths are relative to the current folder).")(command)


def gather_files_or_exit(paths, files_from: str | None, shard, recursive: bool, command: str,
                         before_empty_shard: Callable[[], None] | None = None) -> list[str]:
    """The files of PATHS, --files-from and --shard; one line and exit 2 when there are none.

    A shard that happens to hold none of the files is no error (N may exceed the files):
    it says so and exits 0, after ``before_empty_shard`` (an index makes its empty part).
    """
    from auricle.filelists import gather

    if not paths and files_from is None:
        fail(f"give the files to {command}: PATHS, or --files-from FILE")
    refuse_standard_input(paths, command)
    try:
        files, total = gather(paths, files_from=files_from, shard=shard, recursive=recursive)
    except (AuricleError, ValueError) as error:
        fail(str(error))
    if not total:
        fail("no audio files found in " + " ".join([*paths, *([files_from] if files_from is not None else [])]))
    if not files:
        if before_empty_shard is not None:
            before_empty_shard()
        click.echo(f"auricle: shard {shard} holds none of the {total} files; nothing to do", err=True)
        sys.exit(0)
    return files
