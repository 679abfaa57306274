"""Everything ONNX in auricle: graphs written node by node, exports, sessions, exported files, caches.

========================  ==================================================================
module                    what
========================  ==================================================================
:mod:`.builder`           :class:`~auricle.onnx.builder.GraphBuilder`, int8 weight codes, the two opsets
:mod:`.encoder`           the encoder alone as a graph (what the ``onnx`` engine runs)
:mod:`.graph`             whole models: log-mel, pieces, encoder, head
:mod:`.export`            ``auricle export``: writing and checking a whole-model file
:mod:`.exported`          :class:`~auricle.onnx.exported.ExportedModel`: running such a file without torch
:mod:`.rows`              how an exported file cuts long recordings into calls
:mod:`.sessions`          ONNX Runtime sessions per stream
:mod:`.prepared`          whole models prepared once for the CLI's ``--engine onnx``
:mod:`.cache`             the two caches (encoder graphs, prepared graphs) and their keys
========================  ==================================================================

Absolute imports throughout: ``import onnx`` in these modules is the ``onnx`` package, never this one.
Nothing here imports torch at import time except the graph writers (builder, encoder, graph, export).
"""
