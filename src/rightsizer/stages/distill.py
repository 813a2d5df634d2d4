"""Stage: distillation. Train one student from all teachers (or, as its control, from the data alone).

``name`` is a configured student, or ``<student>-nodistill`` for its data-only control: the same
model, initialisation, seed and schedule on the same labelled rows with plain cross-entropy; it never sees a
soft target. When the student has augmented copies of the training texts in its transfer set, the control
trains on those copies too, with their original labels (not the teacher's), so the comparison isolates what
the teachers add; unlabeled text has no label and only the student gets it.

The student's soft targets are out-of-fold by default (``targets``), its transfer set comes from the bundle,
and ``temperature: auto`` / ``alpha: auto`` are chosen by short runs scored on validation. Inputs are the
prepared data and the teacher bundle written by the teacher-logits stage (refused if made from other data);
the loss and the ``Trainer`` subclass live in :mod:`rightsizer.train.distill`.
"""

from __future__ import annotations

from pathlib import Path

from rightsizer import candidates, launch
from rightsizer.config import RunConfig, StudentConfig
from rightsizer.config import ALPHA_GRID, TEMPERATURE_GRID
from rightsizer.data import load_prepared, load_unlabeled, tokenize
from rightsizer.errors import UserError
from rightsizer.models import count_parameters, describe, load_classifier, load_saved, saved_label_names
from rightsizer.outputs import stage_output, write_json
from rightsizer.stages.teacher_logits import cached_logits, check_labels, read_bundle, teacher_model_dir, transfer_set
from rightsizer.train import fine_tune, training_texts
from rightsizer.train.transfer import copies_labelled_by



def build_student(config: RunConfig, student: StudentConfig, bundle: dict, dataset, label_names: list[str],
                  seed: int | None = None):
    """(model, tokenizer, description) of the untrained student, initialised from ``seed`` (default: the run's)."""
    from rightsizer.train.distill import student_from_layers, student_from_teacher_layers

    if student.from_teacher_layers is not None:
        teacher = student.teacher or config.teachers[0].name
        if student.layers_from == "pretrained":  # the teacher's starting point, with a new head for these labels
            start = config.teacher(teacher).model
            base, tokenizer = load_classifier(start, label_names, training_texts(dataset),
                                              config.seed if seed is None else seed)
            model = student_from_layers(base, student.from_teacher_layers)
            return model, tokenizer, f"{start} (pretrained) layers {student.from_teacher_layers}"
        model, tokenizer = student_from_teacher_layers(teacher_model_dir(bundle, teacher), student.from_teacher_layers)
        return model, tokenizer, f"{teacher} layers {student.from_teacher_layers}"
    if describe(student.model) == "local" and (Path(student.model).expanduser() / "config.json").exists():
        labels = saved_label_names(Path(student.model).expanduser())
        if labels and not all(label == f"LABEL_{i}" for i, label in enumerate(labels)):
            check_labels(f"student model '{student.model}'", labels, label_names)
    shared = None
    if student.online and describe(student.model) == "preset":
        # the teachers will read the student's tokens, so a preset student is built on their tokenizer
        # (training another one would not give the same vocabulary: tokenizers' trainer is not deterministic)
        from transformers import AutoTokenizer

        shared = AutoTokenizer.from_pretrained(str(teacher_model_dir(bundle, bundle["teachers"][0]["name"])))
    model, tokenizer = load_classifier(student.model, label_names, training_texts(dataset),
                                       config.seed if seed is None else seed, tokenizer=shared)
    return model, tokenizer, student.model


def online_teachers(bundle: dict, tokenizer) -> tuple[list, dict[int, object]]:
    """(teacher models, {index: tokenizer} of the teachers that tokenize differently from the student).

    A teacher with the student's vocabulary reads the student's batch; any other reads its own
    tokenization of the same texts (carried beside the student's in the training set).
    """
    from transformers import AutoTokenizer

    dirs = [teacher_model_dir(bundle, entry["name"]) for entry in bundle["teachers"]]
    own = {}
    for index, directory in enumerate(dirs):
        teacher_tokenizer = AutoTokenizer.from_pretrained(str(directory))
        if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
            own[index] = teacher_tokenizer
    return [load_saved(directory)[0] for directory in dirs], own


def with_teacher_tokens(tokenized_train, train, teacher_tokenizers: dict[int, object], max_length: int):
    """Add each listed teacher's own tokenization of the training texts as ``teacher{k}_*`` columns."""
    import datasets

    from rightsizer.train.distill import teacher_column

    pair = "text_pair" in train.column_names
    parts = [tokenized_train]
    for index, teacher_tokenizer in teacher_tokenizers.items():
        encoded = tokenize(train, teacher_tokenizer, max_length, pair)
        names = [n for n in teacher_tokenizer.model_input_names if n in encoded.column_names]
        parts.append(encoded.select_columns(names).rename_columns({n: teacher_column(index, n) for n in names}))
    return datasets.concatenate_datasets(parts, axis=1)


def layer_maps(student: StudentConfig, student_config, bundle: dict) -> list[dict[int, int]]:
    """The student -> teacher layer map for each teacher, checked against both models' depths (configs only)."""
    from transformers import AutoConfig

    student_layers = int(student_config.num_hidden_layers)
    maps = []
    for entry in bundle["teachers"]:
        name = entry["name"]
        teacher_layers = int(AutoConfig.from_pretrained(str(teacher_model_dir(bundle, name))).num_hidden_layers)
        maps.append(checked_layer_map(student, student_layers, name, teacher_layers))
    return maps


def checked_layer_map(student: StudentConfig, student_layers: int, teacher: str, teacher_layers: int) -> dict[int, int]:
    """The student's layer map (given, or uniform) against both depths; UserError names the layer out of range."""
    from rightsizer.train.distill import uniform_layer_map

    layer_map = dict(student.layer_map) if student.layer_map else uniform_layer_map(student_layers, teacher_layers)
    bad_student = sorted(k for k in layer_map if k >= student_layers)
    bad_teacher = sorted(v for v in layer_map.values() if v >= teacher_layers)
    if bad_student:
        raise UserError(f"student '{student.name}': layer_map names student layer {bad_student[0]} but the student "
                        f"has {student_layers} layers (0-{student_layers - 1})")
    if bad_teacher:
        raise UserError(f"student '{student.name}': layer_map names teacher layer {bad_teacher[0]} but teacher "
                        f"'{teacher}' has {teacher_layers} layers (0-{teacher_layers - 1})")
    return layer_map


def distillation_setup(config: RunConfig, student: StudentConfig, bundle: dict, model, tokenizer,
                       temperature: float, alpha: float, seed: int | None = None) -> tuple[dict, dict]:
    """(trainer kwargs for DistillationTrainer, summary facts); every check that can fail runs here, before training."""
    from rightsizer.train.distill import hidden_projections, teacher_weights

    names = [t["name"] for t in bundle["teachers"]]
    scores = [t["validation"].get(config.report.metric, 0.0) for t in bundle["teachers"]]
    weights = teacher_weights(scores, student.teacher_weighting)
    kwargs = {"temperature": temperature, "alpha": alpha, "weights": weights}
    facts = {"teachers": names, "teacher_weights": [round(float(w), 6) for w in weights],
             "teacher_logits": "online" if student.online else "cached",
             "targets": None if student.online else student.targets}
    if student.online:
        if student.hidden_weight > 0:
            kwargs["hidden_weight"] = student.hidden_weight
            kwargs["layer_maps"] = layer_maps(student, model.config, bundle)
        teachers, own = online_teachers(bundle, tokenizer)
        kwargs["teachers"], kwargs["teacher_tokenizers"] = teachers, own
        facts["teacher_tokens"] = {name: "own" if i in own else "student's" for i, name in enumerate(names)}
        if student.hidden_weight > 0:
            kwargs["projections"] = hidden_projections(
                int(model.config.hidden_size), [int(t.config.hidden_size) for t in teachers],
                config.seed if seed is None else seed)
            facts["hidden_matching"] = {name: "pooled" if i in own else "tokens" for i, name in enumerate(names)}
    maps = kwargs.get("layer_maps", [])
    facts["layer_maps"] = {n: {str(k): v for k, v in m.items()} for n, m in zip(names, maps)} or None
    return kwargs, facts


def with_cached_logits(bundle: dict, train, out_of_fold: bool = False):
    """The tokenized training split with a ``teacher_logits`` (teachers, classes) column, looked up by example id."""
    import datasets

    from rightsizer.train.distill import TEACHER_LOGITS

    logits = cached_logits(bundle, train["id"], out_of_fold)
    feature = datasets.Array2D(shape=logits.shape[1:], dtype="float32")
    return train.add_column(TEACHER_LOGITS, logits.tolist(), feature=feature)


def plain_labels(split):
    """``label`` as plain int64 (ClassLabel refuses the -100 of unlabeled transfer rows)."""
    import datasets

    return split.cast_column("label", datasets.Value("int64"))


def with_transfer(tokenized_train, transfer, tokenizer, max_length: int, control: bool):
    """The training rows plus the transfer set: with the teachers' logits for the student; for the control only
    the augmented copies, with their original labels and no logits."""
    import datasets

    from rightsizer.train.distill import TEACHER_LOGITS

    if control:
        transfer = transfer.filter(lambda origin: origin >= 0, input_columns="origin_id").remove_columns(TEACHER_LOGITS)
        if len(transfer) == 0:
            return tokenized_train
    encoded = tokenize(transfer.remove_columns("origin_id"), tokenizer, max_length, "text_pair" in transfer.column_names)
    train = plain_labels(tokenized_train)
    return datasets.concatenate_datasets([train, encoded.select_columns(train.column_names)])


def training_sets(config: RunConfig, student: StudentConfig, control: bool, bundle: dict, dataset, tokenizer,
                  trainer_kwargs: dict, facts: dict, transfer):
    """The tokenized splits one run trains and validates on."""
    pair = "text_pair" in dataset["train"].column_names
    tokenized = tokenize(dataset, tokenizer, config.data.max_length, pair)
    if facts["teacher_logits"] == "cached":
        tokenized["train"] = with_cached_logits(bundle, tokenized["train"], student.targets == "out_of_fold")
    elif trainer_kwargs.get("teacher_tokenizers"):
        tokenized["train"] = with_teacher_tokens(tokenized["train"], dataset["train"],
                                                 trainer_kwargs["teacher_tokenizers"], config.data.max_length)
    if transfer is not None and (control or facts["teacher_logits"] == "cached"):
        tokenized["train"] = with_transfer(tokenized["train"], transfer, tokenizer, config.data.max_length, control)
    return tokenized


def sweep_options(options, student: StudentConfig):
    """The short schedule of one temperature/alpha sweep run."""
    if options.max_steps is not None:
        return options.model_copy(update={"max_steps": max(1, options.max_steps // 4)})
    return options.model_copy(update={"epochs": student.sweep_epochs or max(1.0, options.epochs / 4)})


def choose_by_validation(grid: list[tuple[float, float]], score) -> tuple[tuple[float, float], list[dict]]:
    """The (temperature, alpha) with the best ``score(temperature, alpha)`` (first on ties) and every score."""
    scored = [{"temperature": t, "alpha": a, "validation": float(score(t, a))} for t, a in grid]
    best = max(range(len(scored)), key=lambda i: (scored[i]["validation"], -i))
    return grid[best], scored


def run(config: RunConfig, data_dir: str | Path, teachers_dir: str | Path, output_dir: str | Path,
        name: str | None = None, seed: int | None = None, **fine_tune_kwargs) -> dict:
    """``seed``: which of the student's seeds this run trains with (default: its first)."""
    import shutil
    import time

    from rightsizer.train.distill import DistillationTrainer

    candidate = candidates.find(config, "distill", name)
    student, control = config.student(candidate.member), candidate.control_of is not None
    run_name = candidate.name
    seed = candidate.seed if seed is None else int(seed)
    launched = launch.dispatch("distill", config, output_dir, member=student.model_copy(update={"name": run_name}),
                               inputs={"data_dir": data_dir, "teachers_dir": teachers_dir},
                               in_process_only=bool(fine_tune_kwargs), seed=seed)
    if launched is not None:
        return launched
    dataset, card = load_prepared(data_dir)
    bundle = read_bundle(teachers_dir, card["label_names"], dataset["train"])
    unlabeled = load_unlabeled(data_dir)
    transfer, transfer_entry = None, {}
    if not student.online and (student.augment.active or unlabeled is not None):
        transfer, transfer_entry = transfer_set(bundle, student.augment, unlabeled, copies_labelled_by(student))
    metric = config.report.metric

    def attempt(temperature: float, alpha: float, work, options_for=None, save_model=True, extra=None):
        """Build the student afresh and train it once: (result, model origin, facts, params, plan summary)."""
        model, tokenizer, origin = build_student(config, student, bundle, dataset, card["label_names"], seed)
        counts = count_parameters(model)
        facts: dict = {"teachers": [], "teacher_logits": None, "targets": None}
        kwargs = dict(extra or {})
        trainer_kwargs: dict = {}
        if not control:
            trainer_kwargs, facts = distillation_setup(config, student, bundle, model, tokenizer, temperature, alpha,
                                                           seed)
            kwargs = {"trainer_cls": DistillationTrainer, "trainer_kwargs": trainer_kwargs, **kwargs}
        tokenized = training_sets(config, student, control, bundle, dataset, tokenizer, trainer_kwargs, facts, transfer)
        plan = launch.prepare_training(config, "distill", student, model)
        options = options_for(plan.options) if options_for else plan.options
        result = fine_tune(model, tokenizer, dataset, options, seed=seed, work_dir=work,
                           max_length=config.data.max_length, deepspeed=plan.deepspeed, tokenized=tokenized,
                           save_model=save_model, **kwargs)
        facts["train_rows"] = len(tokenized["train"])
        return result, origin, facts, counts, plan.summary

    with stage_output(output_dir, "distill", config, name=run_name) as out:
        temperature = TEMPERATURE_GRID[1] if student.temperature == "auto" else float(student.temperature)
        alpha = ALPHA_GRID[0] if student.alpha == "auto" else float(student.alpha)
        sweep: list[dict] = []
        sweep_s = 0.0
        if not control and student.sweeps:
            temperatures = TEMPERATURE_GRID if student.temperature == "auto" else (temperature,)
            alphas = ALPHA_GRID if student.alpha == "auto" else (alpha,)
            started = time.perf_counter()

            def score(t: float, a: float) -> float:
                short, *_ = attempt(t, a, out.work / "sweep" / f"run{len(sweep)}", lambda o: sweep_options(o, student),
                                    save_model=False)
                sweep.append({"temperature": t, "alpha": a, "train_time_s": short.train_time_s})
                return short.eval_metrics.get(metric, 0.0)

            (temperature, alpha), scored = choose_by_validation([(t, a) for t in temperatures for a in alphas], score)
            for entry, row in zip(sweep, scored):
                entry[f"val_{metric}"] = round(row["validation"], 6)
            shutil.rmtree(out.work / "sweep", ignore_errors=True)
            sweep_s = time.perf_counter() - started
        result, origin, facts, (params, trainable), plan_summary = attempt(temperature, alpha, out.work,
                                                                           extra=fine_tune_kwargs)
        history = result.log_history
        metrics = {**result.metrics(),
                   **{key: [e[key] for e in history if key in e] for key in ("kd_loss", "ce_loss", "hidden_loss")}}
        write_json(out.work / "metrics.json", metrics)
        transfer_facts = None
        if transfer is not None:
            transfer_facts = {"rows": len(transfer), "augmented_rows": transfer_entry["augmented_rows"],
                              "unlabeled_rows": transfer_entry["unlabeled_rows"], "augmenter": transfer_entry["augmenter"],
                              "labels": transfer_entry.get("labels"),
                              "given": "augmented copies with their original labels" if control else "soft targets"}
        out.summary.update({
            "kind": "student", "model": origin, "seed": seed, "params": params, "trainable_params": trainable,
            "temperature": None if control else temperature, "alpha": 0.0 if control else alpha,
            "temperature_setting": student.temperature, "alpha_setting": student.alpha,
            "sweep": sweep or None, "sweep_time_s": round(sweep_s, 3),
            "hidden_weight": 0.0 if control else student.hidden_weight,
            "teacher_weighting": student.teacher_weighting, **facts, "soft_targets": not control,
            "transfer": transfer_facts,
            **result.summary(), **plan_summary,
            **({"throughput": result.extra["throughput"]} if "throughput" in result.extra else {}),
        })
        if control:
            out.summary["control_of"] = student.name
    return out.summary
