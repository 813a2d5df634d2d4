"""Component: one fold teacher for out-of-fold distillation targets -> ``rightsizer.stages.fold_teacher.run``.

``task`` is one item of the pipeline's fold loop, ``{"teacher": name, "fold": k}`` (a loop over dicts keeps
teachers x folds in one flat ParallelFor, which the local runner can collect).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def fold_teacher(config_json: str, task: dict, data: Input[Dataset], model: Output[Model]):
    from rightsizer.component_runtime import call
    from rightsizer.stages import fold_teacher as stage

    name, fold = str(task["teacher"]), int(task["fold"])  # JSON numbers arrive as floats
    summary = call(stage.run, config_json, data_dir=data.path, output_dir=model.path, name=name, fold=fold)
    model.metadata.update({"name": name, "kind": "fold-teacher", "fold": fold, "train_time_s": summary["train_time_s"]})
