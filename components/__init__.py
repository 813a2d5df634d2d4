"""Thin KFP component wrappers, one file per stage. No logic here: each maps KFP artifacts and
parameters onto ``rightsizer.stages.<stage>.run``. Only the standard library and ``kfp`` are imported
at module level; everything heavy is imported inside the component body (it runs in the image)."""

import os

PUBLISHED_IMAGE = "ghcr.io/rightsizer/rightsizer:0.1.0"  # .github/workflows/images.yml publishes it and its -cuda twin
DEFAULT_IMAGE = os.environ.get("RIGHTSIZER_IMAGE", PUBLISHED_IMAGE)
