"""Component: evaluation of one candidate -> ``rightsizer.stages.evaluate.run``.

Also logs KFP ``Metrics`` (headline numbers) and ``ClassificationMetrics`` (confusion matrix) so
the KFP UI shows them.
"""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def evaluate(config_json: str, name: str, kind: str, data: Input[Dataset], candidate: Input[Model],
             metrics: Output[Artifact], scores: Output[Metrics], confusion: Output[ClassificationMetrics]):
    from rightsizer.component_runtime import call
    from rightsizer.stages import evaluate as stage

    result = call(stage.run, config_json, data_dir=data.path, candidate_dir=candidate.path,
                  output_dir=metrics.path, name=name, kind=kind)
    for key in ("accuracy", "macro_f1", "latency_ms", "latency_p95_ms", "throughput_per_s", "params", "size_mb"):
        if result.get(key) is not None:
            scores.log_metric(key, float(result[key]))
    confusion.log_confusion_matrix(result["labels"], result["confusion_matrix"])
