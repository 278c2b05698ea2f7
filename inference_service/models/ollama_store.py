"""Models already pulled by Ollama, served in place from its store.

The store (``$OLLAMA_MODELS``, default ``~/.ollama/models``) keeps one manifest per name at
``manifests/<host>/<namespace>/<model>/<tag>``: Docker-manifest-like JSON whose ``layers``
carry a ``mediaType`` and a ``digest`` (``sha256:<hex>``). The GGUF file is the layer of
type ``application/vnd.ollama.image.model``, stored as ``blobs/sha256-<hex>``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from inference_service.errors import ModelLoadError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"

_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(:[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def default_store_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


@dataclass(frozen=True)
class OllamaName:
    """``[HOST/][NAMESPACE/]MODEL[:TAG]`` with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> OllamaName | None:
        """The name, or None when ``text`` cannot be an Ollama name (so no path is ever built from it)."""
        path, tag = text, DEFAULT_TAG
        head, _, last = text.rpartition("/")
        if ":" in last:
            last, _, tag = last.partition(":")
            path = f"{head}/{last}" if head else last
        parts = path.split("/")
        if len(parts) == 1:
            host, namespace, model = DEFAULT_HOST, DEFAULT_NAMESPACE, parts[0]
        elif len(parts) == 2:
            host, (namespace, model) = DEFAULT_HOST, parts
        elif len(parts) == 3:
            host, namespace, model = parts
        else:
            return None
        valid = (_HOST.fullmatch(host) and _PART.fullmatch(namespace) and _PART.fullmatch(model)
                 and _TAG.fullmatch(tag))
        return cls(host, namespace, model, tag) if valid else None

    @property
    def manifest_relative_path(self) -> Path:
        return Path(self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        """The shortest spelling, as ``ollama list`` shows it."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


class OllamaStore:
    def __init__(self, root: Path | None = None):
        self.root = root if root is not None else default_store_dir()

    def manifest_path(self, name: OllamaName) -> Path:
        return self.root / "manifests" / name.manifest_relative_path

    def model_blob(self, name: OllamaName) -> Path | None:
        """The GGUF blob of ``name``; None when the store has no such manifest."""
        manifest_path = self.manifest_path(name)
        try:
            if not manifest_path.is_file():
                return None
        except OSError:  # e.g. a name part too long for the file system: no such manifest
            return None
        try:
            layers = json.loads(manifest_path.read_text()).get("layers") or []
            model_layers = [layer for layer in layers if layer.get("mediaType") == MODEL_MEDIA_TYPE]
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"Ollama manifest {manifest_path} is unreadable: {exc}") from exc
        if len(model_layers) != 1:
            found = sorted({str(layer.get("mediaType")) for layer in layers})
            raise ModelLoadError(
                f"Ollama manifest {manifest_path} has {len(model_layers)} layers of type {MODEL_MEDIA_TYPE}, "
                f"not one (layer types: {', '.join(found) or 'none'})")
        layer = model_layers[0]
        algorithm, _, digest = str(layer.get("digest", "")).partition(":")
        if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ModelLoadError(f"Ollama manifest {manifest_path}: bad model layer digest {layer.get('digest')!r}")
        blob = self.root / "blobs" / f"sha256-{digest}"
        if not blob.is_file():
            raise ModelLoadError(f"Ollama model blob {blob} (named by {manifest_path}) is missing")
        size = layer.get("size")
        # A cheap check against a truncated blob; hashing gigabytes at every start would not be.
        if isinstance(size, int) and blob.stat().st_size != size:
            raise ModelLoadError(
                f"Ollama model blob {blob} has {blob.stat().st_size} bytes, its manifest says {size}")
        return blob

    def names(self) -> list[OllamaName]:
        """Every name with a manifest in the store."""
        manifests = self.root / "manifests"
        found = []
        for manifest in manifests.glob("*/*/*/*"):
            if manifest.is_file():
                host, namespace, model, tag = manifest.relative_to(manifests).parts
                found.append(OllamaName(host, namespace, model, tag))
        return sorted(found, key=str)
