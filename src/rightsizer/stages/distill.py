"""Stage: distillation. Train one student from all teachers (or, as its control, from the data alone).

``name`` is a configured student, or ``<student>-nodistill`` for its data-only control: the same
model, initialisation, seed and schedule with ``alpha = 0`` (plain cross-entropy), so the report
shows what distillation added. Inputs are the prepared data and the teacher bundle written by the
teacher-logits stage; the loss and the ``Trainer`` subclass live in :mod:`rightsizer.train.distill`.
"""

from __future__ import annotations

from pathlib import Path

from rightsizer import candidates, launch
from rightsizer.config import RunConfig, StudentConfig
from rightsizer.data import load_prepared, tokenize
from rightsizer.errors import UserError
from rightsizer.models import count_parameters, describe, load_classifier, load_saved, saved_label_names
from rightsizer.outputs import stage_output, write_json
from rightsizer.stages.teacher_logits import cached_logits, check_labels, read_bundle, teacher_model_dir
from rightsizer.train import fine_tune, training_texts



def build_student(config: RunConfig, student: StudentConfig, bundle: dict, dataset, label_names: list[str]):
    """(model, tokenizer, description) of the untrained student."""
    from rightsizer.train.distill import student_from_teacher_layers

    if student.from_teacher_layers is not None:
        teacher = student.teacher or config.teachers[0].name
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
    model, tokenizer = load_classifier(student.model, label_names, training_texts(dataset), config.seed, tokenizer=shared)
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


def distillation_setup(config: RunConfig, student: StudentConfig, bundle: dict, model, tokenizer) -> tuple[dict, dict]:
    """(trainer kwargs for DistillationTrainer, summary facts); every check that can fail runs here, before training."""
    from rightsizer.train.distill import hidden_projections, teacher_weights

    names = [t["name"] for t in bundle["teachers"]]
    scores = [t["validation"].get(config.report.metric, 0.0) for t in bundle["teachers"]]
    weights = teacher_weights(scores, student.teacher_weighting)
    kwargs = {"temperature": student.temperature, "alpha": student.alpha, "weights": weights}
    facts = {"teachers": names, "teacher_weights": [round(float(w), 6) for w in weights],
             "teacher_logits": "online" if student.online else "cached"}
    if student.online:
        if student.hidden_weight > 0:
            kwargs["hidden_weight"] = student.hidden_weight
            kwargs["layer_maps"] = layer_maps(student, model.config, bundle)
        teachers, own = online_teachers(bundle, tokenizer)
        kwargs["teachers"], kwargs["teacher_tokenizers"] = teachers, own
        facts["teacher_tokens"] = {name: "own" if i in own else "student's" for i, name in enumerate(names)}
        if student.hidden_weight > 0:
            kwargs["projections"] = hidden_projections(
                int(model.config.hidden_size), [int(t.config.hidden_size) for t in teachers], config.seed)
            facts["hidden_matching"] = {name: "pooled" if i in own else "tokens" for i, name in enumerate(names)}
    maps = kwargs.get("layer_maps", [])
    facts["layer_maps"] = {n: {str(k): v for k, v in m.items()} for n, m in zip(names, maps)} or None
    return kwargs, facts


def with_cached_logits(bundle: dict, train):
    """The tokenized training split with a ``teacher_logits`` (teachers, classes) column, looked up by example id."""
    import datasets

    from rightsizer.train.distill import TEACHER_LOGITS

    logits = cached_logits(bundle, train["id"])
    feature = datasets.Array2D(shape=logits.shape[1:], dtype="float32")
    return train.add_column(TEACHER_LOGITS, logits.tolist(), feature=feature)


def run(config: RunConfig, data_dir: str | Path, teachers_dir: str | Path, output_dir: str | Path,
        name: str | None = None, **fine_tune_kwargs) -> dict:
    from rightsizer.train.distill import DistillationTrainer

    candidate = candidates.find(config, "distill", name)
    student, control = config.student(candidate.member), candidate.control_of is not None
    run_name = candidate.name
    launched = launch.dispatch("distill", config, output_dir, member=student.model_copy(update={"name": run_name}),
                               inputs={"data_dir": data_dir, "teachers_dir": teachers_dir},
                               in_process_only=bool(fine_tune_kwargs))
    if launched is not None:
        return launched
    dataset, card = load_prepared(data_dir)
    bundle = read_bundle(teachers_dir, card["label_names"])
    with stage_output(output_dir, "distill", config, name=run_name) as out:
        model, tokenizer, origin = build_student(config, student, bundle, dataset, card["label_names"])
        params, trainable = count_parameters(model)
        facts: dict = {"teachers": [], "teacher_logits": None}
        trainer_kwargs: dict = {}
        if not control:
            trainer_kwargs, facts = distillation_setup(config, student, bundle, model, tokenizer)
            fine_tune_kwargs = {"trainer_cls": DistillationTrainer, "trainer_kwargs": trainer_kwargs, **fine_tune_kwargs}
        pair = "text_pair" in dataset["train"].column_names
        tokenized = tokenize(dataset, tokenizer, config.data.max_length, pair)
        if facts["teacher_logits"] == "cached":
            tokenized["train"] = with_cached_logits(bundle, tokenized["train"])
        elif trainer_kwargs.get("teacher_tokenizers"):
            tokenized["train"] = with_teacher_tokens(tokenized["train"], dataset["train"],
                                                     trainer_kwargs["teacher_tokenizers"], config.data.max_length)
        plan = launch.prepare_training(config, "distill", student, model)
        result = fine_tune(
            model, tokenizer, dataset, plan.options, seed=config.seed, work_dir=out.work,
            max_length=config.data.max_length, deepspeed=plan.deepspeed, tokenized=tokenized, **fine_tune_kwargs,
        )
        history = result.log_history
        metrics = {**result.metrics(),
                   **{key: [e[key] for e in history if key in e] for key in ("kd_loss", "ce_loss", "hidden_loss")}}
        write_json(out.work / "metrics.json", metrics)
        out.summary.update({
            "kind": "student", "model": origin, "params": params, "trainable_params": trainable,
            "temperature": student.temperature, "alpha": 0.0 if control else student.alpha,
            "hidden_weight": 0.0 if control else student.hidden_weight,
            "teacher_weighting": student.teacher_weighting, **facts,
            **result.summary(), **plan.summary,
            **({"throughput": result.extra["throughput"]} if "throughput" in result.extra else {}),
        })
        if control:
            out.summary["control_of"] = student.name
    return out.summary
