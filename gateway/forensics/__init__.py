"""Forensics at archive scale: the engine under ``gateway audit`` and ``gateway incident``.

- ``scan``: ``scan()`` streams the records a filter accepts from files, directories, globs
  and standard input (plain, rotated and gzip mixed) on every core; ``collect()`` gathers
  an incident (a token's records, and those of its family and subject) in one pass;
- ``archive``: inputs, gzip inflation, and which files a ``--since``/``--until`` window skips;
- ``envelope``: records out of what log stores wrap them in (kubectl, Loki, Elasticsearch);
- ``needles``: what a line must hold to be decoded, and the fast search for it;
- ``times``: record and window times, as ``gateway audit`` reads them;
- on top of the engine: ``query`` (the filter), ``table``, ``incident`` (collect, text report),
  ``reports`` (JSON, HTML), ``revoke`` (``incident --revoke``), ``progress`` and ``cli``.

The engine imports only the standard library and orjson (and python-isal, StringZilla when
installed), so that a command built on it starts in a tenth of a second; nothing here imports
the request path (aiohttp, the configuration) except ``revoke``, loaded for ``--revoke`` only.
"""
