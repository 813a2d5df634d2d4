"""What every pod of a run is made of, whether KFP starts it (a pipeline task) or a TrainJob does (a node):
its image, and with GPUs its retries and scratch disk. :mod:`rightsizer.pipeline` and
:mod:`rightsizer.launch.trainjob` both read it, so a task and the nodes it launches agree.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rightsizer.errors import UserError

if TYPE_CHECKING:
    from rightsizer.config import RunConfig

GPU_RETRIES = 2
GPU_RETRY_BACKOFF = "60s"
GPU_DISK = "50Gi"
SCRATCH = "/scratch"


def image_for(config: RunConfig, resources_key: str | None = None, gpus: int = 0) -> str:
    """The image for a pod: the CPU image, or with GPUs the CUDA image (``image_cuda``).

    The published images come in pairs (``X`` and ``X-cuda``); a config that names its own CPU build
    must name its CUDA build too, or a GPU stage would train on CPU torch without DeepSpeed."""
    from rightsizer_components import DEFAULT_IMAGE, PUBLISHED_IMAGE

    cpu = config.image or os.environ.get("RIGHTSIZER_IMAGE") or DEFAULT_IMAGE
    if not gpus:
        return cpu
    cuda = config.image_cuda or os.environ.get("RIGHTSIZER_IMAGE_CUDA")
    if cuda:
        return cuda
    if cpu == PUBLISHED_IMAGE:
        return f"{PUBLISHED_IMAGE}-cuda"
    raise UserError(f"resources.{resources_key} asks for {gpus} GPU(s) but only a CPU image is set ({cpu}); set "
                    "image_cuda (or $RIGHTSIZER_IMAGE_CUDA) to a build of images/Dockerfile.cuda (make image-cuda)")
