"""Component: sliced fine-tune (the probed model cut after ``layers`` layers) -> ``rightsizer.stages.slice.run``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def slice_model(config_json: str, layers: int, data: Input[Dataset], model: Output[Model]):
    from rightsizer.component_runtime import call
    from rightsizer.stages import slice as stage

    summary = call(stage.run, config_json, data_dir=data.path, output_dir=model.path, layers=layers)
    model.metadata.update({"name": summary["name"], "kind": "slice", "layers": layers, "params": summary["params"],
                           "train_time_s": summary["train_time_s"]})
