"""Render the ``k8s/`` kustomize overlays, with a clear message when a Secret's env file is missing.

The Secret *values* never live in git: an overlay's ``secretGenerator`` reads a git-ignored
``*.env`` file created from the committed ``*.env.example`` template. ``kubectl kustomize`` only
says "evalsymlink failure" when that file is absent; :func:`render` checks every env/file source
of every generator first (following local bases and components) and says how to create it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from rightsizer.errors import UserError, one_of

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def k8s_root() -> Path:
    """``k8s/`` of this checkout (the directory is not part of the installed package)."""
    return Path(__file__).resolve().parents[2] / "k8s"


def overlay_dir(overlay: str | Path, root: Path | None = None) -> Path:
    """``overlay`` as a path, or the name of a directory under ``k8s/overlays``."""
    path = Path(overlay)
    if path.is_dir():
        return path
    overlays = (root or k8s_root()) / "overlays"
    candidate = overlays / str(overlay)
    if candidate.is_dir():
        return candidate
    known = [p.name for p in overlays.iterdir() if p.is_dir()] if overlays.is_dir() else []
    raise UserError(f"no overlay '{overlay}'" + (f"; overlays: {one_of(known)}" if known else
                                                 " (give the path of a kustomize directory)"))


def _kustomization(directory: Path) -> dict:
    for name in KUSTOMIZATION_FILES:
        file = directory / name
        if file.is_file():
            try:
                return yaml.safe_load(file.read_text()) or {}
            except yaml.YAMLError as exc:
                raise UserError(f"'{file}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    raise UserError(f"'{directory}' has no kustomization.yaml")


def generator_sources(directory: Path, seen: set[Path] | None = None) -> list[Path]:
    """Every local file a secret/configMap generator reads, in ``directory`` and its local bases/components."""
    seen = seen if seen is not None else set()
    directory = directory.resolve()
    if directory in seen:
        return []
    seen.add(directory)
    spec = _kustomization(directory)
    sources: list[Path] = []
    for generator in (spec.get("secretGenerator") or []) + (spec.get("configMapGenerator") or []):
        for entry in (generator.get("envs") or []) + ([generator["env"]] if generator.get("env") else []):
            sources.append(directory / entry)
        for entry in generator.get("files") or []:
            sources.append(directory / str(entry).split("=", 1)[-1])
    for reference in (spec.get("resources") or []) + (spec.get("components") or []) + (spec.get("bases") or []):
        child = directory / str(reference)
        if "://" not in str(reference) and child.is_dir():
            sources.extend(generator_sources(child, seen))
    return sources


def check_sources(directory: Path) -> None:
    for source in generator_sources(directory):
        if source.exists():
            continue
        template = source.with_name(source.name + ".example")
        shown = _shown(source)
        if template.exists():
            raise UserError(f"'{shown}' not found: this overlay builds a Secret from it; create it from the template "
                            f"(cp {_shown(template)} {shown}), put real values in, and keep it out of git "
                            "(it is git-ignored)")
        raise UserError(f"'{shown}' not found: a generator in '{_shown(directory)}' reads it; create it")


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def render(overlay: str | Path, root: Path | None = None, timeout_s: float = 60.0) -> str:
    """The overlay's manifests as one YAML stream (``kubectl kustomize``, or ``kustomize build``)."""
    directory = overlay_dir(overlay, root)
    check_sources(directory)
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(directory)]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", str(directory)]
    else:
        raise UserError("neither kubectl nor kustomize is on PATH; install kubectl (it includes kustomize)")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise UserError(f"'{' '.join(command)}' did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise UserError(f"kustomize could not render '{_shown(directory)}': {lines[-1] if lines else 'no output'}")
    return done.stdout
