"""Serving: the terminal chat session and the OpenAI-style HTTP server (with its one-page web chat)."""
