"""Component: quantize one trained candidate (every ``quantize:`` entry that applies to it) -> ``rightsizer.stages.quantize.run``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def quantize(config_json: str, data: Input[Dataset], source: Input[Model], model: Output[Model]):
    from rightsizer.component_runtime import call
    from rightsizer.stages import quantize as stage

    summary = call(stage.run, config_json, data_dir=data.path, source_dir=source.path, output_dir=model.path)
    model.metadata.update({"source": summary["source"], "candidates": summary["candidates"]})
