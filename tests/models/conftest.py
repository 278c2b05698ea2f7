"""Shared pieces: tiny GGUF files, an Ollama store laid out as Ollama writes it, the real smollm2 file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from inference_service.models.ollama_store import MODEL_MEDIA_TYPE


def write_tiny_gguf(path: Path, label: str = "tiny") -> Path:
    """A made-up but well-formed GGUF file; ``label`` (general.name) tells files apart."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "llama")
    writer.add_name(label)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.ones((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class OllamaStoreBuilder:
    """Writes ``manifests/<host>/<namespace>/<model>/<tag>`` and ``blobs/sha256-<hex>`` like Ollama."""

    def __init__(self, root: Path):
        self.root = root

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / f"sha256-{digest}"

    def add_blob(self, data_file: Path, digest: str | None = None) -> str:
        digest = digest or hashlib.sha256(data_file.read_bytes()).hexdigest()
        blob = self.blob_path(digest)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            try:
                os.link(data_file, blob)  # as big as the model: never copied
            except OSError:
                blob.symlink_to(data_file)
        return digest

    def add_manifest(self, name_path: str, layers: list[dict]) -> Path:
        manifest = self.root / "manifests" / name_path
        manifest.parent.mkdir(parents=True, exist_ok=True)
        template = b"{{ .Prompt }}"
        template_digest = hashlib.sha256(template).hexdigest()
        self.blob_path(template_digest).parent.mkdir(parents=True, exist_ok=True)
        self.blob_path(template_digest).write_bytes(template)
        manifest.write_text(json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": f"sha256:{template_digest}", "size": len(template)},
            "layers": [*layers, {"mediaType": "application/vnd.ollama.image.template",
                                 "digest": f"sha256:{template_digest}", "size": len(template)}],
        }))
        return manifest

    def add_model(self, name_path: str, data_file: Path, digest: str | None = None) -> Path:
        """Stores ``data_file`` as the model of ``name_path`` (host/namespace/model/tag); returns its blob."""
        digest = self.add_blob(data_file, digest)
        self.add_manifest(name_path, [{"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{digest}",
                                       "size": data_file.stat().st_size}])
        return self.blob_path(digest)


@pytest.fixture
def ollama_store(tmp_path) -> OllamaStoreBuilder:
    return OllamaStoreBuilder(tmp_path / "ollama-models")


@pytest.fixture(scope="session")
def smollm2_file(tmp_path_factory) -> Path:
    """The packaged smollm2 file in the real cache (there after ``make model``), never an Ollama copy."""
    from inference_service.models.registry import ModelRegistry

    return ModelRegistry(ollama_dir=tmp_path_factory.mktemp("no-ollama")).pull("smollm2:135m")
