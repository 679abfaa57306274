"""``auricle export``: a self-contained ONNX model (frontend and piece splitting included)."""

from __future__ import annotations

import json

import click

from auricle.cli.common import fail, known_model, load_model_or_exit, writable
from auricle.errors import AuricleError
from auricle.models.registry import DEFAULT_MODEL


@click.command("export")
@click.option("--model", "model_name", default=DEFAULT_MODEL, show_default=True, callback=known_model,
              help="Model name (see `auricle models`).")
@click.option("--checkpoint", type=click.Path(dir_okay=True), default=None,
              help="Weights file or folder (Zenodo .pt, Hugging Face folder, auricle .safetensors).")
@click.option("--format", "export_format", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--int8", is_flag=True,
              help="Dynamic int8: the weights of the encoder's products (and, portable, the head's) as 7-bit "
                   "codes with one scale per output channel, activations quantised per call; the mel "
                   "filterbank stays float32.")
@click.option("--mel-input", is_flag=True,
              help="Take the log-mel (batch, 64, frames) in dB instead of the 16 kHz waveform.")
@click.option("--runtime", type=click.Choice(["portable", "onnxruntime"]), default="portable", show_default=True,
              help="portable: standard ONNX operators, for any ONNX runtime. onnxruntime: the encoder with "
                   "ONNX Runtime's fused com.microsoft operators (Attention, BiasGelu; QAttention with --int8, "
                   "which then quantises only the encoder); faster, but made for ONNX Runtime: other runtimes may "
                   "not load it.")
@click.option("--piece-embeddings", is_flag=True,
              help="Add a third output, `piece_embeddings` (pieces, batch, dim): the mean token of each 10.12 s "
                   "piece, so that `auricle embed --checkpoint FILE.onnx` works.")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Largest probability difference from the PyTorch model an fp32 export may show on the check "
                   "clips; past it nothing is written.")
@click.option("--out", "-o", "out", required=True, type=click.Path(), callback=writable(),
              help="File to write.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def export_command(model_name, checkpoint, export_format, int8, mel_input, runtime, piece_embeddings, tolerance,
                   out, as_json) -> None:
    """Export a model to ONNX, checked against the PyTorch model before it is written.

    The graph takes 16 kHz mono waveforms (batch, samples) of any length, or
    with --mel-input the log-mel, and returns `probabilities` (batch, classes)
    and `embedding` (batch, dim). Clips past 10.12 s are split into pieces
    inside the graph, as `auricle tag` does. Labels and frontend parameters are
    stored in the file's metadata. With --runtime onnxruntime the file uses
    ONNX Runtime's contrib operators, made for ONNX Runtime (other runtimes may not load it).
    """
    from auricle.onnx.export import export_onnx
    from auricle.models.files import is_exported_file

    if not is_exported_file(out):  # every command tells an exported file from weights by this suffix
        fail(f"--out {out}: name the file .onnx, as `auricle tag --checkpoint` recognises an exported file by it")
    model = load_model_or_exit(model_name, checkpoint, "cpu", None, engine="torch", precision="fp32")
    try:
        report = export_onnx(model, out, int8=int8, mel_input=mel_input, runtime=runtime, tolerance=tolerance,
                             piece_embeddings=piece_embeddings)
    except AuricleError as error:
        fail(str(error), code=1)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    precision = "int8" if report.int8 else "fp32"
    click.echo(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, {report.model}, {report.input} input, "
               f"{precision}, {report.runtime} runtime, opset {report.opset}) in {report.seconds:.1f} s")
    click.echo(f"parity vs torch fp32 on {len(report.check_clips)} check clips x 2: max |diff| probabilities "
               f"{report.max_abs_diff:.2e}, embedding {report.embedding_max_abs_diff:.2e}, "
               f"top-{min(5, len(model.labels))} overlap {report.top5_overlap:.3f}")
