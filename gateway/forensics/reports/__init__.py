"""The incident report as a document for tools (``json``) or a self-contained web page (``html``), offline.

Each is imported when its format is asked for: Jinja2 loads only for ``--html``.
"""
