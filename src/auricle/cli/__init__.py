"""Command-line interface: one module per command, each a thin wrapper over library functions.

Commands are imported only when run (or when help lists them), so `auricle tag`
does not pay for the service, export or training imports; errors of auricle's
own types become one line on stderr.
"""

from __future__ import annotations

import difflib
import importlib
import os
import signal
import sys

import click

from auricle.allocator import keep_freed_memory

# name -> "module:attribute" of a click command; one line per command.
COMMANDS: dict[str, str] = {
    "tag": "auricle.cli.tag:tag_command",
    "embed": "auricle.cli.embed:embed_command",
    "models": "auricle.cli.info:models_command",
    "labels": "auricle.cli.info:labels_command",
    "system": "auricle.cli.info:system_command",
    "distill": "auricle.cli.distill:distill_command",
    "export": "auricle.cli.export:export_command",
    "evaluate": "auricle.cli.evaluate:evaluate_command",
    "finetune": "auricle.cli.finetune:finetune_command",
    "probe": "auricle.cli.probe:probe_command",
    "serve": "auricle.cli.serve:serve_command",
    "listen": "auricle.cli.listen:listen_command",
    "index": "auricle.cli.search:index_command",
    "index-merge": "auricle.cli.search:index_merge_command",
    "index-export": "auricle.cli.search:index_export_command",
    "search": "auricle.cli.search:search_command",
    "describe": "auricle.cli.describe:describe_command",
    "ask": "auricle.cli.describe:ask_command",
}


# Commands whose audio decoding runs in a thread beside the model. OpenMP threads that
# spin while idle keep the decoder off the cores the model leaves free between kernels;
# sleeping ones let it in (folder tagging on 2 cores: 0.81 -> 0.86 of model-only
# throughput, model-only unchanged; docs/benchmarks.md). Read by libgomp when torch
# loads, so it is set before the command's module imports torch; a user's value wins.
DECODE_BESIDE_MODEL = frozenset({"tag", "embed", "serve", "listen", "index"})


def prefer_sleeping_openmp_threads() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] in DECODE_BESIDE_MODEL:  # only when that command is about to run
            prefer_sleeping_openmp_threads()
        if args and args[0] not in COMMANDS and not args[0].startswith("-"):
            near = difflib.get_close_matches(args[0], COMMANDS, n=3)
            if near:  # click's own message names no command; `auricle tags` should say `tag`
                ctx.fail(f"No such command {args[0]!r}. Did you mean "
                         + " or ".join(repr(name) for name in near) + "?")
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attribute = target.split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="auricle")
def cli() -> None:
    """auricle: sound tagging, event detection and embeddings with CED audio transformers."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler or ``docker stop``), taken as Ctrl-C is.

    Python's default ends the process on the spot: a ``--format json`` output, written
    when the run ends, was lost, where Ctrl-C kept it.
    """


def _terminate(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    """The ``auricle`` command; once it has finished, the process ends at once (:func:`end`)."""
    keep_freed_memory()  # a model call's temporaries are reused, not faulted in anew (auricle.allocator)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = cli.main(standalone_mode=False)  # interrupts handled here: click would say "Aborted!" and exit 1
        end(code if isinstance(code, int) else 0)
    except click.exceptions.Abort as aborted:
        # The command has said what was kept; the shell's convention: 128 + the signal's number.
        end(128 + (signal.SIGTERM if isinstance(aborted.__cause__, Terminated) else signal.SIGINT))
    except click.ClickException as error:
        error.show()
        end(error.exit_code)
    except ModuleNotFoundError as error:
        if error.name != "torch":
            raise
        # An install without torch (for exported files only: docs/deploy.md) asked for something that needs it.
        click.echo("auricle: error: this needs PyTorch, which is not installed (pip install torch==2.13.0); "
                   "without it auricle runs exported files only: tag, evaluate, serve, listen or embed "
                   "--checkpoint FILE.onnx", err=True)
        end(2)
    except OSError as error:
        if error.filename is None:  # not about a file the user named (a closed pipe, a socket): not ours to word
            raise
        # What only writing shows (a full disk, a folder removed meanwhile); outputs are written atomically.
        click.echo(f"auricle: error: {error.filename}: {error.strerror or error}", err=True)
        end(1)
    except SystemExit as finished:  # how click ends every command
        code = finished.code
        if code is not None and not isinstance(code, int):
            click.echo(str(code), err=True)
            code = 1
        end(code or 0)


def end(code: int) -> None:
    """End the process with ``code`` without Python's shutdown.

    After torch has been imported, the interpreter's shutdown (tearing down
    thousands of modules, torch's finalizers) took 0.7-1.0 s on the 2-core
    development VM: a third of a short command's wall time (docs/benchmarks.md,
    cold start). By now every command has written and closed its outputs, so
    only the standard streams are flushed. The normal shutdown runs instead
    where something still counts on it: ``AURICLE_CLEAN_EXIT=1``, coverage
    measuring the run, or child processes still alive.
    """
    if os.environ.get("AURICLE_CLEAN_EXIT", "") not in ("", "0") or "coverage" in sys.modules or _children_alive():
        sys.exit(code)
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`auricle tag ... | head`) has nothing left to take
            pass
    os._exit(code)


def _children_alive() -> bool:
    multiprocessing = sys.modules.get("multiprocessing")
    return multiprocessing is not None and bool(multiprocessing.active_children())
