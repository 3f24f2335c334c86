"""Every test process (and the subprocesses it starts) uses a private fundbench cache, so a
plugin's tests never read or write ~/.cache/fundbench (this folder is self-contained: copy
the plugin and its tests run the same)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("FUNDBENCH_CACHE", tempfile.mkdtemp(prefix="fundbench-test-cache-"))
