"""Forensics at archive scale: the engine under ``gateway audit`` and ``gateway incident``.

``scan.scan`` streams the records of files, directories, globs and standard input (plain,
rotated and gzip mixed) that a filter accepts, on every core; ``scan.collect`` gathers an
incident (a token's records, and those of its family and subject) in one pass;
``archive`` expands inputs and decides which a time window skips; ``envelope`` takes
records out of what log stores wrap them in. Imports only the standard library and orjson.
"""
