"""The inference service: a gRPC server streaming tokens from quantized CPU models.

Kept import-light on purpose: the REST edge imports the generated stubs from
``inference_service.v1`` and must not pull in the engine (ctransformers, numpy).
"""
