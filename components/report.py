"""Component: report -> ``rightsizer.stages.report.run``; the report also as Markdown and HTML artifacts."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def report(config_json: str, data: Input[Dataset], report_dir: Output[Artifact], markdown: Output[Markdown],
           html: Output[HTML], headline: Output[Metrics],
           teacher_metrics: Optional[Input[List[Artifact]]] = None,
           student_metrics: Optional[Input[List[Artifact]]] = None,
           adapter_metrics: Optional[Input[List[Artifact]]] = None,
           slice_metrics: Optional[Input[List[Artifact]]] = None,
           other_metrics: Optional[Input[List[Artifact]]] = None,
           quantized_teacher_metrics: Optional[Input[List[Artifact]]] = None,
           quantized_student_metrics: Optional[Input[List[Artifact]]] = None,
           quantized_adapter_metrics: Optional[Input[List[Artifact]]] = None,
           quantized_slice_metrics: Optional[Input[List[Artifact]]] = None,
           probe: Optional[Input[Artifact]] = None):
    import os
    import shutil

    from rightsizer.component_runtime import call
    from rightsizer.stages import report as stage

    groups = [teacher_metrics, student_metrics, adapter_metrics, slice_metrics, other_metrics, quantized_teacher_metrics,
              quantized_student_metrics, quantized_adapter_metrics, quantized_slice_metrics]
    metrics_dirs = [artifact.path for group in groups if group for artifact in group]
    leaderboard = call(stage.run, config_json, data_dir=data.path, metrics_dirs=metrics_dirs, output_dir=report_dir.path,
                       probe_dir=probe.path if probe is not None else None)
    shutil.copyfile(os.path.join(report_dir.path, "report.md"), markdown.path)
    shutil.copyfile(os.path.join(report_dir.path, "report.html"), html.path)
    for key, value in stage.headline(report_dir.path).items():
        headline.log_metric(key, value)
    report_dir.metadata["recommended"] = leaderboard["recommended"] or ""
