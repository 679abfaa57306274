"""The HTTP service (``auricle serve``): FastAPI app, dynamic batcher, WebSocket stream and web page.

Importing this package imports nothing heavy; FastAPI is imported by
:mod:`auricle.serve.app` only.
"""
