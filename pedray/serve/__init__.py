"""Serving: the Ray Serve app (router + experts, OpenAI-compatible), its engine, safety and task routing."""
