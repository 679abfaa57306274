"""The search routes of ``auricle serve --index INDEX`` (docs/serve.md, docs/search.md).

``GET /v1/search`` ranks the index's files for a query, ``POST /v1/search`` for an
uploaded clip (``like``: through the served model's embeddings, with the upload limits
of ``/v1/embed``), ``GET /v1/search/index`` says what the index holds (the web page asks
it to show its search box), and ``GET /v1/search/audio`` plays a segment of an indexed
file. That last route reads audio from the server's disk, so it takes a path only as a
key: the path must be one the index records, compared as stored (never joined,
normalised or resolved), so no request can name any other file.
"""

from __future__ import annotations

import io
import os

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from auricle.audio import SAMPLE_RATE
from auricle.errors import AuricleError
from auricle.serve.config import ServeConfig
from auricle.serve.uploads import RequestError

#: Longest segment the page may play at once (seconds): a segment is decoded whole into memory.
MAX_PLAY_SECONDS = 60.0
#: Longest indexed path the audio route looks up (a hostile client's megabyte of "../" is refused unread).
MAX_PATH_CHARS = 4096


class SearchFilters:
    """The query parameters both searches take (``auricle search``'s options), as ``Index.search`` keywords."""

    def __init__(
        self,
        top: int = Query(10, ge=1, le=1000, description="Files to list."),
        path: str | None = Query(None, description="Only files matching this glob."),
        min_duration: float | None = Query(None, ge=0, description="Only files at least this long (s)."),
        max_duration: float | None = Query(None, ge=0, description="Only files at most this long (s)."),
        since: str | None = Query(None, description="Only files modified at or after this date (ISO 8601)."),
        until: str | None = Query(None, description="Only files modified before this date (a date: to its end)."),
    ) -> None:
        self.keywords = {"top": top, "path": path, "min_duration": min_duration, "max_duration": max_duration,
                         "since": since, "until": until}


def add_search_routes(app: FastAPI, model, config: ServeConfig, admitted, on_model, admission, language: bool) -> None:
    """Add the routes above to ``app``; ``admitted``/``on_model``/``admission`` are the app's upload and model helpers."""

    def index_file() -> str:
        if config.search_index is None:
            raise RequestError(404, "this server has no search index; start it with `auricle serve --index FILE`")
        return config.search_index

    def opened():
        from auricle.search import Index

        # Opened per request: an SQLite connection belongs to its thread, and the file may be updated meanwhile.
        return Index.open(index_file(), readonly=True)

    async def answer(ranked) -> dict:
        try:
            return await run_in_threadpool(ranked)
        except AuricleError as error:  # the query's or the index file's one line
            raise RequestError(400, str(error)) from None

    @app.get("/v1/search")
    async def search(
        q: str = Query(..., description="Words, a class name, MID or ontology node (docs/search.md)."),
        filters: SearchFilters = Depends(),
    ) -> dict:
        """Ranked files and time segments of the server's search index (``auricle serve --index``), with why
        each matched: the classes, or the captions."""
        index_file()

        def ranked() -> dict:
            warnings: list[str] = []
            with opened() as index:
                hits = index.search(q, warn=warnings.append, **filters.keywords)
            return {"query": q, "hits": [hit.to_dict() for hit in hits], "warnings": warnings}

        return await answer(ranked)

    @app.post("/v1/search", openapi_extra=app.state.audio_body)
    async def search_like(
        request: Request,
        filters: SearchFilters = Depends(),
        filename: str | None = Query(None, description="Name to report for a raw-body upload."),
    ) -> dict:
        """The indexed files that sound most like the uploaded clip (multipart field ``file``, or the raw body):
        ``auricle search --like``, through the served model's embeddings."""
        index_file()
        if language or not getattr(model, "can_embed", True) or getattr(model, "embedding_dim", None) is None:
            raise RequestError(400, f"like needs embeddings of the index's model; this server runs {model.name}, "
                                    "which gives none")

        def check() -> dict[str, str]:
            with opened() as index:
                index.check(model)
                return dict(index.store.meta)

        meta = await answer(check)  # before the upload is read: another model's embeddings would not compare

        async def work(name: str, waveform: np.ndarray) -> dict:
            from auricle.search.index import like_embedding

            # As `auricle search --like` embeds its recording: the index's windows, one embedding each (CED).
            clip = await on_model(lambda: like_embedding(model, waveform, meta, name))

            def ranked() -> dict:
                warnings: list[str] = []
                with opened() as index:
                    index.check(model)
                    hits = index.search(like=np.asarray(clip, dtype=np.float32), warn=warnings.append,
                                        **filters.keywords)
                return {"like": name, "hits": [hit.to_dict() for hit in hits], "warnings": warnings}

            return await answer(ranked)

        return await admitted(request, filename, work)

    @app.get("/v1/search/index")
    async def search_index() -> dict:
        """What the served index holds: its model, files, captioned files (404 without ``--index``)."""
        index_file()

        def describe() -> dict:
            with opened() as index:
                return {"model": index.model, "files": len(index), "captioned": index.captioned,
                        "like": (not language and index.model == getattr(model, "name", None))}

        return await answer(describe)

    @app.get("/v1/search/audio", response_class=Response,
             responses={200: {"content": {"audio/wav": {}}, "description": "The segment as 16 kHz mono WAV."}})
    async def search_audio(
        file: str = Query(..., max_length=MAX_PATH_CHARS, description="An indexed file's path, as search lists it."),
        start: float = Query(0.0, ge=0, le=1e7, description="Seconds into the file."),
        end: float | None = Query(None, gt=0, le=1e7, description=f"Seconds; at most {MAX_PLAY_SECONDS:g} s after "
                                                                    "start [default: that much]."),
    ) -> Response:
        """A segment of an indexed file as WAV, for the page's players: only files the index records."""
        index_file()
        stop = min(end if end is not None else start + MAX_PLAY_SECONDS, start + MAX_PLAY_SECONDS)
        if stop <= start:
            raise RequestError(400, f"end ({stop:g} s) must come after start ({start:g} s)")

        def read() -> bytes:
            with opened() as index:
                known = file in index
            if not known:  # the same answer for any path the index does not hold: nothing about the disk leaks
                raise RequestError(404, "not a file of the search index")
            if not os.path.isfile(file):
                raise RequestError(404, "indexed, but no longer on the disk; `auricle index` again to drop it")
            return segment_wav(file, start, stop)

        with admission:
            try:
                data = await run_in_threadpool(read)
            except AuricleError as error:  # the index file's, or the audio's one line
                raise RequestError(400, str(error)) from None
        return Response(data, media_type="audio/wav", headers={"Cache-Control": "no-store"})


def segment_wav(path: str, start: float, end: float) -> bytes:
    """Seconds ``start`` to ``end`` of ``path``, decoded (16 kHz mono) and written as 16-bit WAV."""
    import soundfile

    from auricle.audio import iter_blocks

    first, last = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)
    pieces, position = [], 0
    blocks = iter_blocks(path, SAMPLE_RATE)
    for block in blocks:  # decoded as far as the end only
        if position + len(block) > first:
            pieces.append(block[max(0, first - position):max(0, last - position)])
        position += len(block)
        if position >= last:
            break
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
