"""`picochat serve`: an OpenAI-compatible HTTP server with a chat page.

cli.py (the verb) -> app.py (the FastAPI app: routes, errors, streaming) -> scheduler.py (one
generation thread interleaving requests) -> the engine; protocol.py holds the wire format;
static/ the page (no external resources).
"""
