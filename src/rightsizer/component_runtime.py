"""What a KFP component body calls: parse the config, run the stage, report user errors.

Components stay thin (see ``components/``); this is the one place that turns a stage's
:class:`UserError` into something the local runner can show as a one-line ``error:``: the message
is written to ``$RIGHTSIZER_ERROR_FILE`` when that is set, then the task fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from rightsizer.config import config_from_json
from rightsizer.errors import UserError
from rightsizer.timing import busy

ERROR_FILE_ENV = "RIGHTSIZER_ERROR_FILE"


def call(stage_run: Callable[..., Any], config_json: str, **kwargs: Any) -> Any:
    try:
        config = config_from_json(config_json)
        if getattr(stage_run, "times_itself", False):
            return stage_run(config, **kwargs)
        with busy():  # a local run's timings wait for this stage (see rightsizer.timing)
            return stage_run(config, **kwargs)
    except UserError as exc:
        path = os.environ.get(ERROR_FILE_ENV)
        if path:
            with open(path, "a") as handle:
                handle.write(f"{exc}\n")
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
