"""Component: one zero-/k-shot prompting baseline row -> ``rightsizer.stages.prompting.run``.

Its output is a metrics directory like an evaluation's, so the report takes it as it is.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def prompting(config_json: str, name: str, data: Input[Dataset], metrics: Output[Artifact], scores: Output[Metrics]):
    from rightsizer.component_runtime import call
    from rightsizer.stages import prompting as stage

    result = call(stage.run, config_json, data_dir=data.path, output_dir=metrics.path, name=name)
    for key in ("accuracy", "macro_f1", "latency_ms", "params"):
        if result.get(key) is not None:
            scores.log_metric(key, float(result[key]))
    scores.log_metric("shots", float(result["shots"]))
