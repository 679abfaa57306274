"""``auricle listen``: live tagging of the microphone, raw PCM on stdin, or a file played in real time."""

from __future__ import annotations

import signal
import sys
import threading

import click

from auricle.cli.common import fail, given_on_command_line, load_model_or_exit, model_options, tag_option_flags
from auricle.errors import AuricleError
from auricle.io.live_lines import LIVE_FORMATS
from auricle.options import LIVE_TAG_OPTIONS


@click.command("listen")
@click.argument("source", required=False, default=None)
@model_options
@tag_option_flags(LIVE_TAG_OPTIONS)
@click.option("--format", "-f", "output_format", type=click.Choice(LIVE_FORMATS), default="text",
              show_default=True)
@click.option("--windows", "show_windows", is_flag=True, help="Also print every window's tags.")
@click.option("--rate", type=click.IntRange(1), default=16000, show_default=True, help="Raw PCM input: sample rate.")
@click.option("--channels", type=click.IntRange(1), default=1, show_default=True, help="Raw PCM input: channels.")
@click.option("--sample-format", type=click.Choice(["s16le", "s32le", "f32le", "u8"]), default="s16le",
              show_default=True, help="Raw PCM input: sample format.")
@click.option("--input-device", default=None, help="Microphone: PortAudio device name or number.")
@click.option("--as-fast-as-possible", "fast", is_flag=True, help="A file: do not pace it in real time.")
def listen_command(source, model_name, checkpoint, device, threads, window, hop, top_k, threshold, classes, profile,
                   output_format, show_windows, rate, channels, sample_format, input_device, fast) -> None:
    """Tag live audio with a rolling WINDOW every HOP and print events as they start and end.

    SOURCE is omitted (or `mic`) for the microphone, `-` for raw PCM on stdin
    (s16le, 16 kHz, mono unless told otherwise), or a file played in real time.
    An event's onset is known to within one hop; its end is reported once the
    sound has left the window (WINDOW seconds later). A latency summary goes to
    stderr at the end. Input of less than 0.15 s of audio (or none) is an error
    (exit status 1): there is nothing to report.
    """
    from auricle.inference.tagging import ClassSpace
    from auricle.listen import PcmDecoder, file_blocks, listen, microphone_blocks
    from auricle.listen import StreamEnd, TimedReport

    if hop > window:
        fail(f"--hop ({hop}) must be at most --window ({window})")
    if source != "-":  # a file or the microphone says its own rate and layout; silently ignoring them misleads
        ctx = click.get_current_context()
        given = [flag for name, flag in (("rate", "--rate"), ("channels", "--channels"),
                                         ("sample_format", "--sample-format")) if given_on_command_line(ctx, name)]
        if given:
            fail(f"{' and '.join(given)}: for raw PCM on stdin (SOURCE -) only; "
                 f"{_source_name(source)} has its own format")
    model = load_model_or_exit(model_name, checkpoint, device, threads, exported=True)
    try:
        options = model.tag_options(top_k=top_k, threshold=threshold, classes=classes, profile=profile,
                                    events=True, window=window, hop=hop)
        space = ClassSpace.build(model.labels, options.classes, options.profile)
        if source in (None, "mic"):
            blocks = microphone_blocks(input_device)
        elif source == "-":
            decoder = PcmDecoder(rate, sample_format, channels)
            blocks = _stdin_blocks(decoder)
        else:
            blocks = file_blocks(source, realtime=not fast)
    except (AuricleError, ValueError) as error:
        fail(str(error))

    import numpy as np

    def score(samples):
        return np.asarray(model.probabilities(samples, finite=False)[0])  # the tagger names the window if NaN

    from auricle.io.live_lines import LiveLineWriter, latency_summary

    printer = LiveLineWriter(sys.stdout, output_format, show_windows)
    compute: list[float] = []
    delays: list[float] = []
    end = 0.0
    finished = StreamEnd(0.0, "no audio received")
    interrupt = _Interrupt()
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous_handler = signal.signal(signal.SIGINT, interrupt.handle) if in_main_thread else None
    try:
        for item in listen(score, interrupt.blocks(blocks), space, options):
            if isinstance(item, TimedReport):
                compute.append(item.compute_seconds)
                delays.append(item.delay_seconds)
                end = item.report.end
                printer.report(item)
            elif isinstance(item, StreamEnd):
                finished = item
            else:
                printer.end(item, end)
    except AuricleError as error:
        message, name = str(error), _source_name(source)
        fail(message if message.startswith(name) else f"{name}: {message}", code=1)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
    if source == "-" and decoder.partial_frame:
        click.echo(f"auricle: warning: {decoder.partial_frame}", err=True)
    if finished.nothing_reported:
        # As `auricle tag` fails on a file without samples: a source that delivered nothing is worth noticing.
        fail(f"{_source_name(source)}: {finished.nothing_reported}", code=1)
    click.echo(f"auricle: {latency_summary(compute, delays, finished.duration, hop)}", err=True)


class _Interrupt:
    """Ctrl-C ends the stream as EOF would: the tail is reported and open events end.

    While waiting for audio the signal interrupts the wait; while the model
    runs it only asks the loop to stop before the next block.
    """

    def __init__(self) -> None:
        self.requested = False
        self.waiting = False

    def handle(self, signum, frame) -> None:
        self.requested = True
        if self.waiting:
            raise KeyboardInterrupt

    def blocks(self, blocks):
        iterator = iter(blocks)
        while True:
            self.waiting = True
            try:
                if self.requested:
                    return
                block = next(iterator)
            except (StopIteration, KeyboardInterrupt):
                return
            finally:
                self.waiting = False
            yield block


def _source_name(source: str | None) -> str:
    return {None: "microphone", "mic": "microphone", "-": "<stdin>"}.get(source, source)


def _stdin_blocks(decoder):
    from auricle.listen import pcm_blocks

    return pcm_blocks(sys.stdin.buffer, decoder)
