"""Text: the tokenizer, the chat template and its format (dates, thinking flags), thinking-block
splitting and prompt rendering (strings, message lists or token ids to the ids the model sees).
Imports :mod:`smollm3_jax.utils` (and, lazily, the checkpoint readers for a tokenizer inside a GGUF)."""
