"""The engine: tokenization, templates, sampling and generation. No gRPC here."""
