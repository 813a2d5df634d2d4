"""Component: one PEFT adapter on its pretrained base -> ``rightsizer.stages.adapters.run``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def adapter(config_json: str, name: str, data: Input[Dataset], model: Output[Model]):
    from rightsizer.component_runtime import call
    from rightsizer.stages import adapters as stage

    summary = call(stage.run, config_json, data_dir=data.path, output_dir=model.path, name=name)
    model.metadata.update({"name": name, "kind": "adapter", "method": summary["method"],
                           "trainable_params": summary["trainable_params"],
                           "trainable_share": summary["trainable_share"],
                           "peak_memory_mb": summary["peak_memory_mb"], "train_time_s": summary["train_time_s"]})


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def adapter_seeded(config_json: str, task: dict, data: Input[Dataset], model: Output[Model]):
    """One seed's run of an adapter trained with several seeds; ``task`` is ``{"candidate": adapter, "seed": seed}``."""
    from rightsizer.component_runtime import call
    from rightsizer.stages import adapters as stage

    name, seed = str(task["candidate"]), int(task["seed"])  # JSON numbers arrive as floats
    summary = call(stage.run, config_json, data_dir=data.path, output_dir=model.path, name=name, seed=seed)
    model.metadata.update({"name": name, "kind": "adapter", "seed": seed, "method": summary["method"],
                           "trainable_params": summary["trainable_params"],
                           "trainable_share": summary["trainable_share"],
                           "peak_memory_mb": summary["peak_memory_mb"], "train_time_s": summary["train_time_s"]})
