"""Puts a model into the cache (``INFERENCE_SERVICE_CACHE``) ready to serve, then exits.

    python prepare_model.py [NAME ...]        (default: smollm2:135m)

For each name: what ``python -m inference_service pull`` does (fetch, verify, cache), and,
when ``--engine auto`` would serve the file on ctransformers, the compatible copy that
engine loads (``<cache>/compat``), which the service would otherwise write on its first
start. After it, a service reading this cache writes nothing there: the image can bake the
model at build (``--build-arg PULL_MODEL=...``), and replicas sharing one volume do not race
to write the same copy (compose runs this once, before the replicas).

The copy's name depends on the model file's absolute path: prepare the cache at the path the
service will read it from.
"""

from __future__ import annotations

import sys

from inference_service.engine.engine_choice import GGUFIdentity, choose_engine, split_engine
from inference_service.errors import InferenceError
from inference_service.models.registry import DEFAULT_MODEL, ModelRegistry


def prepare(spec: str, registry: ModelRegistry) -> None:
    name, engine = split_engine(spec)
    model = registry.resolve(name)
    chosen = choose_engine(engine or "auto", GGUFIdentity.read(model.source_path), model.name)
    if chosen == "ctransformers":
        print(f"{model.name}: {model.source_path} (ctransformers loads {model.loadable_path})")
    else:
        print(f"{model.name}: {model.source_path} ({chosen})")


def main(argv: list[str] | None = None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or [DEFAULT_MODEL]
    registry = ModelRegistry()
    try:
        for spec in names:
            prepare(spec, registry)
    except InferenceError as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
