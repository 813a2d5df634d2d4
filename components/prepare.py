"""Component: data prep -> ``rightsizer.stages.prepare.run``."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def prepare(config_json: str, data: Output[Dataset]):
    from rightsizer.component_runtime import call
    from rightsizer.stages import prepare as stage

    summary = call(stage.run, config_json, output_dir=data.path)
    data.metadata.update({"rows": summary["rows"], "labels": summary["label_names"]})
