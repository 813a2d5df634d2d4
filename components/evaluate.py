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
                  output_dir=metrics.path, name=name, kind=kind, candidate_uri=candidate.uri)
    forms = result.get("candidates")  # a quantize stage's output: one row per quantized form
    for row in forms if forms is not None else [result]:
        prefix = f"{row['name']}_" if forms is not None else ""
        for key in ("accuracy", "macro_f1", "latency_ms", "latency_p95_ms", "throughput_per_s", "params", "size_mb"):
            if row.get(key) is not None:
                scores.log_metric(prefix + key, float(row[key]))
    if forms is None or forms:
        first = result if forms is None else forms[0]
        confusion.log_confusion_matrix(first["labels"], first["confusion_matrix"])
