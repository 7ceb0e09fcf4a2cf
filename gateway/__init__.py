"""The serving process: OpenAI-compatible endpoint, routing, upstreams, metrics, CLI."""
