"""Stage: data prep. Load the source, map columns, drop bad rows, split, drop validation/test duplicates of
training texts, save + card.json (with the leakage counts)."""

from __future__ import annotations

from pathlib import Path

from rightsizer.config import RunConfig
from rightsizer.data import prepare_dataset, prepare_unlabeled, save_prepared
from rightsizer.outputs import stage_output


def run(config: RunConfig, output_dir: str | Path) -> dict:
    with stage_output(output_dir, "prepare", config, name="data") as out:
        dataset, card = prepare_dataset(config.data, config.seed)
        if config.evaluation.prompting is not None:  # the verbalizer and template against the data, before training
            from rightsizer.stages.prompting import resolve_verbalizer, template_for

            resolve_verbalizer(config.evaluation.prompting.verbalizer, card["label_names"])
            template_for(config.evaluation.prompting, card["pair_task"])
        unlabeled = None
        if config.data.unlabeled_source:
            unlabeled, card["unlabeled"] = prepare_unlabeled(config.data, dataset)
        save_prepared(dataset, card, out.work, unlabeled)
        out.summary.update({"rows": card["rows"], "label_names": card["label_names"], "dropped_rows": card["dropped_rows"],
                            "duplicates_removed": card["leakage"]["removed"],
                            **({"unlabeled": card["unlabeled"]} if unlabeled is not None else {})})
    return out.summary
