"""Component: layer probe -> ``rightsizer.stages.probe.run``.

Returns the slice depths to fine-tune (``finetune_slices``, with ``auto`` resolved from the probe
scores at run time), which the pipeline loops over with ``dsl.ParallelFor``.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def probe(config_json: str, data: Input[Dataset], probe: Output[Artifact], scores: Output[Metrics]) -> List[int]:
    from rightsizer.component_runtime import call
    from rightsizer.stages import probe as stage

    summary = call(stage.run, config_json, data_dir=data.path, output_dir=probe.path)
    scores.log_metric("best_layer", float(summary["best_layer"]))
    for key, value in summary["best_validation"].items():
        scores.log_metric(f"best_validation_{key}", float(value))
    probe.metadata.update({"best_layer": summary["best_layer"], "slices": summary["slices"],
                           "family": summary["family"], "depth": summary["depth"]})
    return summary["slices"]
