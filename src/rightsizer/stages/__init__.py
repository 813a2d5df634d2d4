"""Pipeline stages as plain functions ``run(config, inputs..., output_dir) -> summary``.

One module per stage; which stages exist, their ``--in`` inputs, resources keys and whether they
launch is said once, in :data:`rightsizer.plan.STAGES`.
"""
