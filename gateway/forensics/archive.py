"""An audit archive as inputs (offline): files, directories, globs and standard input, plain or gzip,
and which of them a ``--since``/``--until`` window lets the scan skip without reading.

One name for three jobs: ``inputs`` (what the names expand to), ``inflate`` (their bytes,
gzip inflated, in blocks of whole lines) and ``window`` (which inputs the window skips).
"""

from .inflate import GZIP_BACKEND, GZIP_MAGIC, MAX_LINE, gunzip, line_blocks
from .window import name_time

__all__ = ["GZIP_BACKEND", "GZIP_MAGIC", "MAX_LINE", "gunzip", "line_blocks", "name_time"]
