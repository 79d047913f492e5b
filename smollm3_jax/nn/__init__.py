"""The model: its config, the SmolLM3 network (Flax NNX), the functional KV cache, int8
quantization and sharding over a device mesh. Imports only :mod:`smollm3_jax.utils`."""
