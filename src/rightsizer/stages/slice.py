"""Stage: sliced fine-tune. The probed model cut after ``k`` layers, fine-tuned in full.

The model named by ``probe.model`` (a teacher's pretrained model or a reference) keeps its
embeddings, its first ``k`` blocks (and a decoder's final norm) and gets a fresh classification
head (:func:`rightsizer.slicing.slice_model`); it is then trained like a teacher, with
``rightsizer.train.fine_tune`` and the ``probe`` section's training options. The saved model's
config says ``num_hidden_layers = k``, so it reloads with ``from_pretrained``. Candidate name:
``<model>-L<k>``, kind ``slice``. Like a teacher, it runs on one device, as every rank of a torchrun
launch, or on every node of a TrainJob, as ``resources.slice`` (default: ``resources.probe``) says
(``launch.dispatch``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from rightsizer.config import RunConfig
from rightsizer.data import load_prepared
from rightsizer.errors import UserError
from rightsizer import candidates, launch
from rightsizer.models import count_parameters
from rightsizer.outputs import stage_output, write_json
from rightsizer.slicing import family_of, layer_stack, slice_model
from rightsizer.stages.probe import load_probed_model, probe_config, probe_reference, resolve_pooling
from rightsizer.train import fine_tune


def run(config: RunConfig, data_dir: str | Path, output_dir: str | Path, layers: int | None = None,
        name: str | None = None, **fine_tune_kwargs) -> dict:
    """The slice ``layers`` deep (the pipeline passes it), else the one called ``name`` (a slice candidate's
    name or a layer count, as ``rightsizer stage slice --name`` gives it), else the first configured."""
    probe = probe_config(config)
    if layers is not None and int(layers) < 1:
        raise UserError(f"slice depth must be a layer count >= 1, got {layers}")
    chosen = candidates.slice_candidate(config, int(layers)) if layers is not None else candidates.find(config, "slice", name)
    depth, candidate = chosen.layers, chosen.name
    launched = launch.dispatch("slice", config, output_dir, inputs={"data_dir": data_dir},
                               member=SimpleNamespace(name=candidate, **probe.model_dump()),  # --name picks the slice
                               in_process_only=bool(fine_tune_kwargs))
    if launched is not None:
        return launched
    dataset, card = load_prepared(data_dir)
    with stage_output(output_dir, "slice", config, name=candidate) as out:
        model, tokenizer = load_probed_model(config, dataset, card["label_names"])
        family = family_of(model)
        full_depth = len(layer_stack(model))
        if family.decoder:  # the head pools the last non-pad token
            resolve_pooling("last", model, tokenizer)
        slice_model(model, depth)
        params, trainable = count_parameters(model)
        plan = launch.prepare_training(config, "slice", probe, model)
        result = fine_tune(
            model, tokenizer, dataset, plan.options, seed=config.seed, work_dir=out.work,
            max_length=config.data.max_length, deepspeed=plan.deepspeed, **fine_tune_kwargs,
        )
        write_json(out.work / "metrics.json", result.metrics())
        out.summary.update({
            "kind": "slice", "seed": config.seed, "model": probe_reference(config), "family": family.name, "layers": depth,
            "full_layers": full_depth, "params": params, "trainable_params": trainable,
            **result.summary(), **plan.summary,
        })
    return out.summary
