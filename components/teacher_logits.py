"""Component: gather all teachers for the students, caching their logits -> ``rightsizer.stages.teacher_logits.run``.

The one task outside the loops that sees every teacher and every fold teacher (``dsl.Collected``); each
student task in the students loop reads its single ``bundle`` output.
"""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from rightsizer_components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def teacher_logits(config_json: str, data: Input[Dataset], teachers: Input[List[Model]], bundle: Output[Artifact],
                   folds: Optional[Input[List[Model]]] = None):
    from rightsizer.component_runtime import call
    from rightsizer.stages import teacher_logits as stage

    summary = call(stage.run, config_json, data_dir=data.path,
                   teacher_dirs=[t.path for t in teachers] + [f.path for f in folds or []], output_dir=bundle.path)
    bundle.metadata.update({"teachers": summary["teachers"], "cached_logits": summary["cached_logits"],
                            "teacher_pass_s": summary["teacher_pass_s"]})
