"""Real-process fakes of servers we do not own (OpenAI-compatible upstreams) and a gateway harness."""
