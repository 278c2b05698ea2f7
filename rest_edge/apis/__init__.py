"""The edge's API adapters: one module per public API beside OpenAI's chat family.

Each adapter reads its API's JSON into the gRPC contract (``GenerateRequest``) and renders
the contract's events (``rest_edge.responses.events``) in its own wire format and error
shape. Shared underneath: typed field readers that name JSON paths (:mod:`.fields`, also
used by ``rest_edge.requests``), the function-tool readers (:mod:`.tools`), named-event SSE
with cancellation (:mod:`.sse`) and the HTTP resources of a generation route
(:mod:`.generation`: body limit, request ids, disconnect watch, status before the first
token). A new API is one new module, its routes in ``rest_edge.app`` and its tests.

* :mod:`.openai_responses`   POST /v1/responses (stateless)
* :mod:`.anthropic_messages` POST /v1/messages, /v1/messages/count_tokens (Anthropic's shape)
* :mod:`.ollama`             Ollama's native API under /api (NDJSON streams, its model routes)
"""
