from __future__ import annotations

import metarl  # noqa: F401  (registers the task families)
