"""The edge's API adapters: one module per public API that is not OpenAI's chat family.

Each adapter reads its API's JSON into the gRPC contract (``GenerateRequest``) and renders
the contract's events (``rest_edge.responses.events``) in its own wire format and error
shape. Shared underneath: typed field readers that name JSON paths (:mod:`.fields`, also used by
``rest_edge.requests``). A new API is one new module, its routes
in ``rest_edge.app`` and its tests.

"""
