"""smollm3-jax: SmolLM3 in JAX/Flax NNX."""

from smollm3_jax.config import SmolLM3Config
from smollm3_jax.kv_cache import KVCache
from smollm3_jax.model import SmolLM3

__all__ = ["SmolLM3Config", "SmolLM3", "KVCache"]
