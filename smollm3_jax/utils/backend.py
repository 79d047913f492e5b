"""The engine's choices that depend on the backend its programs run on, in one place.

====================== ====== ========= ==============================================================
choice                 cpu    tpu/gpu   why
====================== ====== ========= ==============================================================
``sync_phases``        True   False     The pool waits for each prefill and insert program before it
                                        goes on, to time the phases apart. On XLA:CPU the programs
                                        share the host's cores, so nothing is lost. On an accelerator
                                        the wait stalls the host while the device could already run
                                        the next queued program; without it the phase seconds count
                                        the dispatch only and the decode seconds hold the wait (the
                                        host needs a result only after a decode chunk).
``prefill_chunk``      64     256       Prompt tokens a prefill call writes per row. CPU: prefill is
                                        compute-bound, so padding costs its full share and 64 keeps a
                                        chat prompt's padding small. TPU/GPU: a call reads every
                                        weight whatever its width, so a wider call costs less per
                                        token until the chip turns compute-bound; 256 tokens is about
                                        where a v5e does (its FLOP/s over its bytes/s; an H100's ratio
                                        is similar, v6e's nearer 512). SmolLM3's chat template alone
                                        is longer than 64 tokens.
``prefill_rows``       (1,)   (1,)      Prompts per prefill call. One, so a prompt's numbers never
                                        depend on what is prefilled beside it.
``query_block``        0      64 / 0    Prefill's attention takes its queries in blocks of this many
                                        tokens at read windows of at least ``query_block_window``
                                        slots (a static choice per program; every query's numbers are
                                        its own either way). On TPU (64, from 2048): a 256-token
                                        chunk's scores against a long window otherwise go through HBM
                                        (v6e); shorter windows keep them on chip without blocks, which
                                        are then a little slower. CPU/GPU: off.
``narrow_min``         4      4         A pool narrows to no fewer slots. XLA:CPU rounds decode steps
                                        of 1-3 rows differently from 4 or more (tiny preset: log-probs
                                        ~1e-6 apart), so narrowing further could change a sampled
                                        token at a near-tie. On TPU/GPU a padded row costs little next
                                        to the weights a step reads: kept.
``search_radix``       2      16        The ways each round of the sampling filters' cut-off search
                                        (top-k, top-p, typical-p) splits its interval; every radix
                                        finds the same cut-off. 2: 32 rounds, each one pass over the
                                        vocabulary; 16: 8 rounds comparing 15 keys per pass. On
                                        XLA:CPU a pass is compute-bound, so 16 is slower; on a TPU
                                        each pass reads the rows' logits from HBM, so 16 reads them 4x
                                        fewer times.
``int8_w8a8``          True   False     What ``quantize="int8"`` means
                                        (:mod:`~smollm3_jax.nn.quantize`). CPU: int8 x int8 products
                                        (W8A8) run in YNNPACK's kernels, where int8 x float would
                                        widen every weight in memory per call. TPU/GPU: weight-only,
                                        the norm there: the widening fuses into the matmul (HBM holds
                                        int8) and unrounded activations are more accurate.
``compiler_options``   ()     see why   XLA options for every program the engine compiles. TPU:
                                        ``xla_tpu_msa_inefficient_use_to_copy_ratio=1.0``: when a
                                        decode step's window covers the whole cache, XLA's
                                        memory-space assignment otherwise moves each cache layer into
                                        on-chip memory and back every step.
``batch_buckets``      fine   fine      Slot counts pools round up to
                                        (:data:`~smollm3_jax.utils.buckets.DEFAULT_BATCH_BUCKETS`):
                                        little padding, more programs. Kept on TPU/GPU, where the
                                        server and chat compile a pool's programs before the first
                                        request (``Pool.warmup``) and a coarser set pads more rows.
====================== ====== ========= ==============================================================

Measured figures, with their dates and commands, are in ``docs/performance.md``.
"""

from __future__ import annotations

import dataclasses

import jax

from smollm3_jax.utils.buckets import DEFAULT_BATCH_BUCKETS

__all__ = ["Choices", "choices", "platform_of"]


@dataclasses.dataclass(frozen=True)
class Choices:
  """One backend's choices (the table of the module docstring). All static: shapes and host logic."""

  sync_phases: bool
  prefill_chunk: int = 64
  prefill_rows: tuple[int, ...] = (1,)
  narrow_min: int = 4
  search_radix: int = 2
  int8_w8a8: bool = True
  query_block: int = 0  # prefill's attention takes its queries in blocks of this many (0: all at once)
  query_block_window: int = 0  # ... at read windows of at least this many cache slots
  compiler_options: tuple[tuple[str, str], ...] = ()  # XLA's, for every program the engine compiles
  batch_buckets: tuple[int, ...] = DEFAULT_BATCH_BUCKETS

  def query_block_at(self, window: int) -> int:
    """The query block of a prefill program reading ``window`` cache slots (0: none)."""
    return self.query_block if self.query_block and window >= self.query_block_window else 0


_CHOICES = {
  "cpu": Choices(sync_phases=True),
  "tpu": Choices(
    sync_phases=False,
    prefill_chunk=256,
    search_radix=16,
    int8_w8a8=False,
    query_block=64,
    query_block_window=2048,
    compiler_options=(("xla_tpu_msa_inefficient_use_to_copy_ratio", "1.0"),),
  ),
  "gpu": Choices(sync_phases=False, prefill_chunk=256, search_radix=16, int8_w8a8=False),
}


def choices(platform: str | None = None) -> Choices:
  """The choices of ``platform`` ("cpu", "tpu", "gpu"; "cuda" and "rocm" are "gpu"; default: JAX's
  default backend). An unknown platform gets the accelerators' choices."""
  platform = (platform or jax.default_backend()).lower()
  platform = "gpu" if platform in ("cuda", "rocm") else platform
  return _CHOICES.get(platform, _CHOICES["tpu"])


def platform_of(tree) -> str:
  """The platform of the devices the first array (or ``ShapeDtypeStruct`` with a sharding) of
  ``tree`` lives on; JAX's default backend when it has none."""
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None:
      return next(iter(sharding.device_set)).platform
  return jax.default_backend()
