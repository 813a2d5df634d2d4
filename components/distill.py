"""Component: distil one student (or its ``<student>-nodistill`` control) -> ``rightsizer.stages.distill.run``."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def distill(config_json: str, name: str, data: Input[Dataset], teachers: Input[Artifact], model: Output[Model]):
    from rightsizer.component_runtime import call
    from rightsizer.stages import distill as stage

    summary = call(stage.run, config_json, data_dir=data.path, teachers_dir=teachers.path, output_dir=model.path,
                   name=name)
    model.metadata.update({"name": name, "kind": "student", "params": summary["params"],
                           "train_time_s": summary["train_time_s"], "teachers": summary["teachers"],
                           "alpha": summary["alpha"], "control_of": summary.get("control_of", "")})


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def distill_seeded(config_json: str, task: dict, data: Input[Dataset], teachers: Input[Artifact], model: Output[Model]):
    """One seed's run of a student (or control) trained with several seeds; ``task`` is ``{"candidate", "seed"}``."""
    from rightsizer.component_runtime import call
    from rightsizer.stages import distill as stage

    name, seed = str(task["candidate"]), int(task["seed"])  # JSON numbers arrive as floats
    summary = call(stage.run, config_json, data_dir=data.path, teachers_dir=teachers.path, output_dir=model.path,
                   name=name, seed=seed)
    model.metadata.update({"name": name, "kind": "student", "seed": seed, "params": summary["params"],
                           "train_time_s": summary["train_time_s"], "teachers": summary["teachers"],
                           "alpha": summary["alpha"], "control_of": summary.get("control_of", "")})
