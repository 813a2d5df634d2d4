"""requirements.lock: the one dependency set that `make setup`, the images and CI install.

The lock must agree with pyproject.toml (every declared dependency pinned inside its range, nothing
declared that the lock lacks, nothing in the lock claimed by pyproject that pyproject no longer
declares), pin every package exactly with hashes, leave torch to TORCH_SPEC, and carry no CUDA
packages (the CPU wheel is installed first). The installed environment must be the locked one.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCKED_EXTRAS = ("test", "deepspeed", "kubeflow")  # the Makefile's EXTRAS


def parse_lock(text: str) -> dict[str, dict]:
    """name -> {version, hashes, via} from a `uv pip compile --generate-hashes` file."""
    entries: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s\\;]+)", line)
        if pin:
            current = {"version": pin.group(3), "hashes": [], "via": []}
            entries[canonicalize_name(pin.group(1))] = current
            continue
        if current is None:
            continue
        hashed = re.search(r"--hash=(sha256:[0-9a-f]{64})", line)
        if hashed:
            current["hashes"].append(hashed.group(1))
        via = re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)
        if via and via.group(1) != "via":
            current["via"].append(via.group(1).strip())
    return entries


def declared() -> list[Requirement]:
    project = PYPROJECT["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in LOCKED_EXTRAS:
        requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return requirements


def makefile_extras() -> list[str]:
    match = re.search(r"^EXTRAS\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile has no EXTRAS default"
    return match.group(1).split(",")


LOCKED = parse_lock(LOCK.read_text())


def test_parse_lock_reads_pins_hashes_and_origins():
    text = ("foo-bar==1.2.3 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 + "\n"
            "    # via\n    #   rightsizer (pyproject.toml)\n    #   peft\nbaz==0.1 \\\n    --hash=sha256:" + "c" * 64
            + "\n    # via foo-bar\n")
    parsed = parse_lock(text)
    assert parsed["foo-bar"] == {"version": "1.2.3", "hashes": ["sha256:" + "a" * 64, "sha256:" + "b" * 64],
                                 "via": ["rightsizer (pyproject.toml)", "peft"]}
    assert parsed["baz"]["via"] == ["foo-bar"]


def test_the_makefile_locks_and_installs_the_same_extras():
    assert tuple(makefile_extras()) == LOCKED_EXTRAS


def test_every_declared_dependency_is_locked_inside_its_range():
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            assert name not in LOCKED, "torch is installed first by TORCH_SPEC (CPU or CUDA build), not from the lock"
            continue
        assert name in LOCKED, f"{requirement} is in pyproject.toml but not in requirements.lock: run `make lock`"
        version = LOCKED[name]["version"]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside pyproject.toml's {requirement.specifier}: run `make lock`")


def test_nothing_in_the_lock_is_claimed_by_pyproject_that_it_no_longer_declares():
    names = {canonicalize_name(r.name) for r in declared()}
    stale = sorted(name for name, entry in LOCKED.items()
                   if any(v.startswith("rightsizer (pyproject.toml)") for v in entry["via"]) and name not in names)
    assert not stale, f"requirements.lock still lists {stale} for rightsizer: run `make lock`"


def test_every_pin_is_exact_and_hashed_and_no_cuda_package_is_locked():
    assert len(LOCKED) > 50  # the whole transitive set, not only the top level
    for name, entry in LOCKED.items():
        assert entry["hashes"], f"{name} has no hash in requirements.lock"
        assert not name.startswith(("nvidia-", "triton")), f"{name}: the lock must not pull CUDA packages"


def test_prefix_tuning_pair_is_locked():
    # transformers 5.24 changed how models take their cache and peft 0.21's prefix tuning stopped working;
    # 5.23 with peft 0.21.2 runs every method in the registry (tests/test_adapters.py)
    assert LOCKED["transformers"]["version"].startswith("5.23.")
    assert LOCKED["peft"]["version"] == "0.21.2"


def test_the_installed_environment_is_the_locked_one():
    mismatched = []
    for name, entry in LOCKED.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            mismatched.append(f"{name} (not installed)")
            continue
        if canonicalize_name(installed) != canonicalize_name(entry["version"]) and installed != entry["version"]:
            mismatched.append(f"{name} {installed} != {entry['version']}")
    assert not mismatched, f"installed packages differ from requirements.lock (rerun `make setup`): {mismatched[:10]}"
