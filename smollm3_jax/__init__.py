"""smollm3-jax: SmolLM3 in JAX/Flax NNX.

model = smollm3_jax.from_pretrained("demo")            # or a HF dir, .gguf, Orbax dir, hub id
tok = smollm3_jax.Tokenizer.from_pretrained("demo")
result = smollm3_jax.generate(model, tok, ["Hello!"], temperature=0.6, top_p=0.95)
"""

from smollm3_jax.checkpoints import from_pretrained, load_config
from smollm3_jax.evaluation.scoring import RollingScore, Score, score, score_rolling
from smollm3_jax.generation import sampling
from smollm3_jax.generation.api import Completion, GenerationResult, GenerationStats, Stream, generate, stream
from smollm3_jax.generation.engine import Engine
from smollm3_jax.nn.config import SmolLM3Config
from smollm3_jax.nn.kv_cache import KVCache
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.text.thinking import split_thinking
from smollm3_jax.text.tokenizer import Tokenizer

__all__ = [
  "SmolLM3Config",
  "SmolLM3",
  "KVCache",
  "sampling",
  "generate",
  "stream",
  "Engine",
  "Completion",
  "GenerationResult",
  "GenerationStats",
  "Stream",
  "Tokenizer",
  "split_thinking",
  "from_pretrained",
  "load_config",
  "score",
  "score_rolling",
  "Score",
  "RollingScore",
]
