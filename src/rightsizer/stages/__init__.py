"""Pipeline stages as plain functions ``run(config, inputs..., output_dir) -> summary``.

``STAGES`` maps a stage name to its module and the ``--in`` inputs ``rightsizer stage NAME`` takes,
in order (a leading ``*`` means "all remaining inputs, as a list").
"""

STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "prepare": ("rightsizer.stages.prepare", ()),
    "teacher": ("rightsizer.stages.teacher", ("data_dir",)),
    "teacher-logits": ("rightsizer.stages.teacher_logits", ("data_dir", "*teacher_dirs")),
    "distill": ("rightsizer.stages.distill", ("data_dir", "teachers_dir")),
    "probe": ("rightsizer.stages.probe", ("data_dir",)),
    "slice": ("rightsizer.stages.slice", ("data_dir",)),  # --name <model>-L<k> picks the depth
    "adapters": ("rightsizer.stages.adapters", ("data_dir",)),  # --name picks the adapter
    "prompting": ("rightsizer.stages.prompting", ("data_dir",)),  # --name prompt-<model>-<k>shot
    "evaluate": ("rightsizer.stages.evaluate", ("data_dir", "candidate_dir")),
    "report": ("rightsizer.stages.report", ("data_dir", "*metrics_dirs")),
}
