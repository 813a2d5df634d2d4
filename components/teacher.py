"""Component: teacher training -> ``rightsizer.stages.teacher.run``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def teacher(config_json: str, name: str, data: Input[Dataset], model: Output[Model]):
    from rightsizer.component_runtime import call
    from rightsizer.stages import teacher as stage

    summary = call(stage.run, config_json, data_dir=data.path, output_dir=model.path, name=name)
    model.metadata.update({"name": name, "kind": "teacher", "params": summary["params"],
                           "train_time_s": summary["train_time_s"]})


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def teacher_seeded(config_json: str, task: dict, data: Input[Dataset], model: Output[Model]):
    """One seed's run of a teacher trained with several seeds; ``task`` is ``{"candidate": teacher, "seed": seed}``."""
    from rightsizer.component_runtime import call
    from rightsizer.stages import teacher as stage

    name, seed = str(task["candidate"]), int(task["seed"])  # JSON numbers arrive as floats
    summary = call(stage.run, config_json, data_dir=data.path, output_dir=model.path, name=name, seed=seed)
    model.metadata.update({"name": name, "kind": "teacher", "seed": seed, "params": summary["params"],
                           "train_time_s": summary["train_time_s"]})
