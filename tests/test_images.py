"""images/: the Dockerfiles install what pyproject.toml and the Makefile say, and run as non-root.

No Docker engine runs here, so the Dockerfiles are parsed: base images pinned, torch pinned first
(the Makefile's TORCH_SPEC), then exactly requirements.lock before the source, then the package with
extras that exist in pyproject; the CUDA image builds the locked DeepSpeed with nvcc of torch's CUDA in
its build stage only, ships CUDA once (torch's wheels) and a C compiler for Triton; CI builds and
publishes both; every package directory copied in, a non-root USER last, no secrets.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cpu": REPO / "images" / "Dockerfile", "cuda": REPO / "images" / "Dockerfile.cuda"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def arg_defaults(path: Path) -> dict[str, str]:
    defaults = {}
    for op, rest in instructions(path):
        if op == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            defaults[name.strip()] = shlex.split(value)[0] if value.strip() else ""
    return defaults


def makefile_default(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile has no {name} default"
    return match.group(1)


def final_stage(path: Path) -> list[tuple[str, str]]:
    ops = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(ops) if op == "FROM")
    return ops[last_from:]


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_torch_first_then_the_package_with_extras_from_pyproject(flavour):
    path = DOCKERFILES[flavour]
    args = arg_defaults(path)
    assert args["TORCH_SPEC"] == makefile_default("TORCH_SPEC")  # the same pin as `make setup`
    torch_pin = Requirement(args["TORCH_SPEC"])
    torch_range = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "torch")
    pinned = next(iter(torch_pin.specifier)).version
    assert torch_range.specifier.contains(pinned), f"{pinned} outside pyproject's {torch_range.specifier}"
    extras = args["EXTRAS"].split(",")
    assert set(extras) <= set(PYPROJECT["project"]["optional-dependencies"]) and "test" not in extras
    runs = [rest for op, rest in instructions(path) if op == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if 'pip install "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"' in r)
    package_step = next(i for i, r in enumerate(runs) if re.search(r'pip install (--no-deps )?"\.\[\$\{EXTRAS\}\]"', r))
    assert torch_step < package_step


def test_cuda_image_uses_the_makefile_gpu_index_and_builds_the_locked_deepspeed():
    args = arg_defaults(DOCKERFILES["cuda"])
    assert args["TORCH_INDEX"] in (REPO / "Makefile").read_text()  # the documented GPU index (cu128)
    cuda = re.search(r"/cu(\d+)(\d)$", args["TORCH_INDEX"])
    assert args["CUDA_APT_VERSION"] == f"{cuda.group(1)}-{cuda.group(2)}"  # nvcc = torch's CUDA (cu128 -> 12-8)
    deepspeed = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["deepspeed"]]
    locked = re.search(r"^deepspeed==(\S+)", (REPO / "requirements.lock").read_text(), re.M)
    assert locked and all(r.specifier.contains(locked.group(1)) for r in deepspeed)
    assert "deepspeed" in args["EXTRAS"].split(",")
    build = " ".join(rest for op, rest in instructions(DOCKERFILES["cuda"]) if op == "RUN")
    assert "DS_BUILD_CPU_ADAM=1" in build and "DS_BUILD_FUSED_ADAM=1" in build and "--no-build-isolation" in build
    assert f"cuda-nvcc-${{CUDA_APT_VERSION}}" in build  # nvcc in the build stage only
    assert arg_defaults(DOCKERFILES["cpu"])["TORCH_INDEX"].endswith("/cpu")


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_installs_exactly_the_lock_before_copying_the_source(flavour):
    """Both images install requirements.lock (hash-checked, no resolving) before the source is copied, so a
    code change does not reinstall ~2 GB of dependencies."""
    ops = instructions(DOCKERFILES[flavour])
    copies = [i for i, (op, rest) in enumerate(ops) if op == "COPY" and "--from" not in rest]
    lock_copy = next(i for i in copies if "requirements.lock" in ops[i][1])
    lock_install = next(i for i, (op, rest) in enumerate(ops)
                        if op == "RUN" and "--require-hashes --no-deps" in rest and "-r requirements.lock" in rest)
    source_copy = next(i for i in copies if ops[i][1].split()[0] == "src")
    assert lock_copy < lock_install < source_copy
    package = next(rest for op, rest in ops if op == "RUN" and '".[${EXTRAS}]"' in rest)
    assert "--no-deps" in package  # the package itself resolves nothing


def test_cuda_image_ships_cuda_once_and_can_compile_for_triton():
    final = final_stage(DOCKERFILES["cuda"])
    base = arg_defaults(DOCKERFILES["cuda"])["PYTHON_IMAGE"]
    assert final[0] == ("FROM", "${PYTHON_IMAGE}") and base.startswith("python:3.11")  # not an nvidia/cuda base
    installed = " ".join(rest for op, rest in final if op == "RUN")
    assert not re.search(r"\bcuda-|libcu\w+-dev|nvidia", installed)  # CUDA only from torch's nvidia-* wheels
    assert re.search(r"\bgcc\b", installed) and "libc6-dev" in installed  # Triton builds its launcher at run time
    args = arg_defaults(DOCKERFILES["cuda"])
    bases = [args.get(rest.split()[0].strip("${}"), rest.split()[0]) for op, rest in instructions(DOCKERFILES["cuda"])
             if op == "FROM"]
    assert bases and not any("nvidia/cuda" in b for b in bases)  # neither stage carries a CUDA toolkit image


def test_ci_builds_and_publishes_both_images():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "images.yml").read_text())
    (job,) = workflow["jobs"].values()
    built = {entry["dockerfile"]: entry["suffix"] for entry in job["strategy"]["matrix"]["include"]}
    assert built == {"images/Dockerfile": "", "images/Dockerfile.cuda": "-cuda"}
    step = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action"))
    assert step["with"]["file"] == "${{ matrix.dockerfile }}" and step["with"]["context"] == "."
    assert "ghcr.io/" in step["with"]["tags"] and "${{ matrix.suffix }}" in step["with"]["tags"]
    assert workflow["permissions"]["packages"] == "write"
    from rightsizer_components import PUBLISHED_IMAGE

    assert PUBLISHED_IMAGE.startswith("ghcr.io/") and PUBLISHED_IMAGE.endswith(f":{PYPROJECT['project']['version']}")


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_every_package_directory_is_copied_in(flavour):
    copied = {source for op, rest in instructions(DOCKERFILES[flavour]) if op == "COPY" and "--from" not in rest
              for source in shlex.split(rest)[:-1]}
    needed = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values()) | {"pyproject.toml", PYPROJECT["project"]["readme"]}
    assert needed <= copied, needed - copied
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for name in needed:
        assert not any(pattern.rstrip("/") == name for pattern in ignored), f".dockerignore drops {name}"


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_runs_as_non_root_from_pinned_bases_without_secrets(flavour):
    path = DOCKERFILES[flavour]
    args = arg_defaults(path)
    for op, rest in instructions(path):
        if op == "FROM":
            image = rest.split()[0]
            image = args.get(image.strip("${}"), image) if image.startswith("$") else image
            assert ":" in image and not image.endswith(":latest"), image
    users = [rest for op, rest in final_stage(path) if op == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root") and (not uid.isdigit() or int(uid) >= 1000)
    declared = [rest.split("=")[0] for op, rest in instructions(path) if op in ("ARG", "ENV")]
    declared += [pair.split("=")[0] for op, rest in instructions(path) if op == "ENV" for pair in rest.split()]
    for name in declared:
        assert not re.search(r"SECRET|PASSWORD|TOKEN\b|_TOKEN|ACCESS_KEY|CREDENTIAL", name, re.I), name
    python = re.search(r"python:(\d+\.\d+)", path.read_text()) or re.search(r"ubuntu(24)\.04", path.read_text())
    version = python.group(1) if python.group(1) != "24" else "3.12"  # Ubuntu 24.04 ships Python 3.12
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(f"{version}.0")


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    for pattern in ("**/.git", "**/.venv", "**/*.env", "runs/", "k8s/"):
        assert pattern in ignored, pattern


def test_makefile_builds_both_images():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^image:", makefile, re.M) and re.search(r"^image-cuda:", makefile, re.M)
    assert "-f images/Dockerfile " in makefile and "-f images/Dockerfile.cuda " in makefile
