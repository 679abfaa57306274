"""``auricle serve``: the HTTP API and web page (FastAPI + uvicorn)."""

from __future__ import annotations

import json
import os

import click

from auricle.cli.common import fail, load_model_or_exit, model_options, names_a_language_model


@click.command("serve")
@model_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; 0.0.0.0 exposes the service to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Server processes, each with its own copy of the model.")
@click.option("--max-upload-mb", type=click.FloatRange(0, min_open=True), default=50.0, show_default=True,
              help="Larger uploads get 413.")
@click.option("--max-duration", type=click.FloatRange(0, min_open=True), default=600.0, show_default=True,
              help="Seconds of audio beyond which a request gets 413.")
@click.option("--max-windows", type=click.IntRange(1), default=1000, show_default=True,
              help="Analysis windows one request may ask for (413 beyond).")
@click.option("--max-pending", type=click.IntRange(1), default=64, show_default=True,
              help="Requests in progress at once; more get 503 with Retry-After.")
@click.option("--request-timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds a tagging or embedding request may take (503 beyond).")
@click.option("--generation-timeout", type=click.FloatRange(0, min_open=True), default=1800.0, show_default=True,
              help="Seconds a MiDashengLM request (/v1/describe, /v1/ask, /v1/chat/completions) may take, waiting "
                   "for the requests before it included (503 beyond): a 7B on a CPU takes about a minute per "
                   "30 s segment.")
@click.option("--max-batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="Windows per model call across concurrent requests.")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long a window may wait for others to fill a batch.")
@click.option("--max-streams", type=click.IntRange(1), default=8, show_default=True,
              help="Concurrent /v1/stream sockets (more are closed with code 1013).")
@click.option("--header-timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds a connection may take to send a request's headers (408 and closed beyond).")
@click.option("--body-timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds an upload may take once its headers are in (408 beyond).")
@click.option("--max-connections-per-client", type=click.IntRange(1), default=32, show_default=True,
              help="Open connections from one address (more get 429 and are closed).")
@click.option("--shutdown-timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds a stopping server waits for requests in progress.")
@click.option("--max-decoded-seconds", type=click.FloatRange(0, min_open=True), default=2400.0, show_default=True,
              help="Decoded audio all requests may hold at once (requests wait for their share).")
@click.option("--max-stream-seconds", type=click.FloatRange(0, min_open=True), default=120.0, show_default=True,
              help="Audio one /v1/stream socket may hold at once (window plus one message), at 16 kHz.")
@click.option("--stream-idle-timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds a /v1/stream socket may send nothing (then closed with code 1008).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Another name the Host header may carry (a proxy's public name); '*' for any. Repeatable. "
                   "Default: the loopback names and --host (any name when --host is 0.0.0.0 or ::).")
@click.option("--allowed-origin", "allowed_origins", multiple=True, metavar="URL",
              help="A browser origin besides the page's own that may POST or open a stream, e.g. "
                   "https://app.example.com; '*' for any. Repeatable.")
@click.option("--index", "search_index", default=None, metavar="FILE",
              help="An `auricle index` file for /v1/search and the page's search box (docs/search.md).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
def serve_command(model_name, checkpoint, device, threads, host, port, workers, max_upload_mb, max_duration,
                  max_windows, max_pending, request_timeout, generation_timeout, max_batch_size, max_wait_ms,
                  max_streams, header_timeout, body_timeout, max_connections_per_client, shutdown_timeout,
                  max_decoded_seconds, max_stream_seconds, stream_idle_timeout, allowed_hosts, allowed_origins,
                  search_index, log_level) -> None:
    """Serve tagging and embeddings over HTTP, with a web page at /.

    API: POST /v1/tag, POST /v1/embed (with MiDashengLM: POST /v1/describe, /v1/ask, /v1/chat/completions),
    GET /v1/models, GET /v1/labels,
    GET and POST /v1/search (with --index), GET /healthz, WebSocket /v1/stream; OpenAPI at /docs and /openapi.json.
    See docs/serve.md.
    """
    try:
        import uvicorn

        from auricle.serve.config import ServeConfig
        from auricle.serve.protocol import GuardedH11Protocol
    except ImportError as error:
        fail(f"the service needs its extra: pip install 'auricle[serve]' ({error})")
    if search_index is not None:
        _refuse_an_unusable_index(search_index)
        search_index = os.path.abspath(search_index)  # workers may start elsewhere
    try:
        config = ServeConfig(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_duration=max_duration,
                             max_windows=max_windows, max_pending=max_pending, request_timeout=request_timeout,
                             generation_timeout=generation_timeout,
                             max_batch_size=max_batch_size, max_wait=max_wait_ms / 1000,
                             max_streams=max_streams, header_timeout=header_timeout, body_timeout=body_timeout,
                             max_connections_per_client=max_connections_per_client, shutdown_timeout=shutdown_timeout,
                             max_decoded_seconds=max_decoded_seconds, max_stream_seconds=max_stream_seconds,
                             stream_idle_timeout=stream_idle_timeout, allowed_hosts=served_hosts(host, allowed_hosts),
                             allowed_origins=allowed_origins, search_index=search_index)
    except ValueError as error:
        fail(str(error).replace("max_decoded_seconds", "--max-decoded-seconds").replace("max_duration", "--max-duration")
             .replace("max_stream_seconds", "--max-stream-seconds"))
    # h11 with the header timeout and per-client cap; uvicorn's own 16 KiB bound on incomplete headers stays.
    server = {"http": GuardedH11Protocol, "timeout_graceful_shutdown": shutdown_timeout}
    _refuse_a_taken_port(host, port)  # before the model loads, not after (uvicorn's "[Errno 98]", exit 3)
    # Several processes: each worker builds its own app from a description; the model loads here first, once,
    # so that a bad one fails before any worker starts.
    model = _load_served_or_exit(model_name, checkpoint, device, threads)
    if workers == 1:
        from auricle.serve.app import create_app

        uvicorn.run(create_app(model, config), host=host, port=port, log_level=log_level, **server)
        return
    from dataclasses import asdict

    from auricle.onnx.exported import ExportedModel

    if isinstance(model, ExportedModel):  # an exported file, or the graph --engine onnx prepared: workers load it
        checkpoint = str(model.path)
    meta = click.get_current_context().meta
    os.environ["AURICLE_SERVE"] = json.dumps({
        "model": model_name, "checkpoint": checkpoint, "device": device, "threads": threads,
        "engine": meta.get("auricle.engine", "torch"), "precision": meta.get("auricle.precision", "fp32"),
        "config": asdict(config),
    })
    uvicorn.run("auricle.serve.app:create_app_from_environment", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, **server)


def _load_served_or_exit(model_name: str, checkpoint: str | None, device: str, threads: int | None):
    """The tagger, encoder, exported file or audio-language model (MiDashengLM) to serve, or one line and exit."""
    if not names_a_language_model(model_name, checkpoint):
        return load_model_or_exit(model_name, checkpoint, device, threads, exported=True)
    meta = click.get_current_context().meta
    if meta.get("auricle.engine", "torch") != "torch" or meta.get("auricle.precision", "fp32") != "fp32":
        fail("MiDashengLM runs on the torch engine in its stored precision; drop --engine/--precision")
    if str(device).split(":")[0] != "cpu":
        fail(f"MiDashengLM runs on the CPU in auricle for now, not on {device}")
    import torch

    from auricle.cli.describe import load_language_or_exit

    if threads:
        torch.set_num_threads(threads)
    return load_language_or_exit(model_name, checkpoint)


def _refuse_an_unusable_index(path: str) -> None:
    from auricle.errors import AuricleError
    from auricle.search import Index

    try:
        Index.open(path, readonly=True).close()
    except AuricleError as error:
        fail(str(error))


def _refuse_a_taken_port(host: str, port: int) -> None:
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        fail(f"{host}:{port}: cannot listen there ({error.strerror or error}); choose another --port or --host")


def served_hosts(host: str, extra: tuple[str, ...]) -> tuple[str, ...]:
    """Names the Host header may carry: loopback's and the bound address, or any for a wildcard bind."""
    from auricle.serve.config import LOOPBACK_HOSTS

    if host in ("0.0.0.0", "::", "") and not extra:
        return ("*",)  # reached by whatever names the network gives this machine
    return (*LOOPBACK_HOSTS, host.strip("[]"), *extra)
