"""Mutation check: plants known bugs one at a time in a scratch copy and runs the tests meant to catch each.

Usage (from the repository root; not part of ``make test``, takes ~15 minutes on 2 CPU cores):

  .venv/bin/python tools/mutate.py              # every mutation, after a baseline run
  .venv/bin/python tools/mutate.py --list       # names only
  .venv/bin/python tools/mutate.py rope_sign eos_after_budget   # a selection (no baseline)

Each mutation is an exact text replacement in one library file. The text to replace must occur
exactly once in the current code, else the script stops before running anything: the list has to
follow the code. The scratch copy holds the working tree's tracked and untracked (not ignored)
files, so uncommitted tests are checked too; the repository itself is never modified.

A mutation is "caught" when its tests fail (pytest exit status 1) and "survived" when they pass.
Before the mutations, the union of all selected tests runs once unmutated and must pass, or a
failure would count as a catch. Exit status: 0 when every mutation was caught.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G, S, C = "tests/test_generate.py::", "tests/test_sampling.py::", "tests/test_checkpoints.py::"
W, R = "tests/test_sweep.py::", "tests/test_server_requests.py::"
H = "tests/test_hostile.py::"


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str  # library file, relative to the repository root
  old: str  # exact text, occurring once
  new: str
  tests: tuple[str, ...]  # pytest node ids expected to fail


MUTATIONS = (
  # ---- bugs that once survived the suite (issue 22) ----------------------------------------
  # ("pads_in_presence", prefill's observe counting pad slots, is no single-site bug any more: insert
  # rebuilds a started row's context from its prompt's history (sampling.prefix_context), and that cut
  # and prefill's pad mask each keep pads out; test_pad_slots_are_not_penalised still guards it.)
  Mutation(
    "eos_after_budget",
    "smollm3_jax/generation/decode.py",
    "  reason = jnp.where(active & (reason == 0) & is_stop, EOS, reason)\n"
    "  reason = jnp.where(active & (reason == 0) & (n >= rows.max_new), MAX_TOKENS, reason)\n",
    "  reason = jnp.where(active & (reason == 0) & (n >= rows.max_new), MAX_TOKENS, reason)\n"
    "  reason = jnp.where(active & (reason == 0) & is_stop, EOS, reason)\n",
    (G + "test_stop_token_on_the_last_allowed_step_is_eos",),
  ),
  Mutation(
    "newline_run_never_reset",
    "smollm3_jax/generation/decode.py",
    "newline_run = jnp.where(is_newline, s.newline_run + 1, 0)",
    "newline_run = s.newline_run + is_newline.astype(jnp.int32)",
    (G + "test_newline_guard_counts_consecutive_newlines_only",),
  ),
  Mutation(
    "stop_token_in_text",
    "smollm3_jax/generation/results.py",
    "body = ids[:-1] if ids and request.reason == EOS and ids[-1] in stop_ids else ids",
    "body = ids",
    (G + "test_stop_token_is_reported_but_not_in_the_text",),
  ),
  Mutation(
    "cdf_block_offset_zero",
    "smollm3_jax/generation/sampling.py",
    "  before = jnp.where(j > 0,",
    "  before = 0.0 * jnp.where(j > 0,",
    (S + "test_draws_over_a_real_vocabulary_match_softmax_frequencies",),
  ),
  Mutation(
    "rmsnorm_variance_bf16",
    "smollm3_jax/nn/model.py",
    "var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)",
    "var = jnp.mean(jnp.square(x), axis=-1, keepdims=True).astype(jnp.float32)",
    (C + "test_bf16_rmsnorm_equals_transformers_bf16",),
  ),
  Mutation(
    "softmax_bf16",
    "smollm3_jax/nn/model.py",
    "probs = jax.nn.softmax(scores, axis=-1)",
    "probs = jax.nn.softmax(scores.astype(v.dtype), axis=-1)",
    (C + "test_bf16_attention_equals_transformers_bf16",),
  ),
  # ---- bugs the suite already caught; kept so it keeps catching them ----------------------
  # (the engine's per-row cache lengths and read window: decode.py, engine.py, kv_cache.py)
  Mutation(
    "rope_sign",
    "smollm3_jax/nn/model.py",
    "rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)",
    "rotated = jnp.concatenate([x[..., half:], -x[..., :half]], axis=-1)",
    (G + "test_greedy_single_prompt_equals_transformers",),
  ),
  Mutation(
    "rope_on_every_layer",
    "smollm3_jax/nn/model.py",
    "Attention(config, config.uses_rope(layer),",
    "Attention(config, True,",
    (G + "test_greedy_single_prompt_equals_transformers",),
  ),
  Mutation(
    "nope_index_off_by_one",
    "smollm3_jax/nn/config.py",
    "return bool(self.no_rope_layers[layer])",
    "return bool(self.no_rope_layers[layer - 1])",
    (G + "test_greedy_single_prompt_equals_transformers",),
  ),
  Mutation(
    "yarn_factor_ignored",
    "smollm3_jax/nn/model.py",
    "inv_freq_interp = 1.0 / (np.float32(factor) * pos_freqs)",
    "inv_freq_interp = 1.0 / pos_freqs",
    (C + "test_f32_logits_match_transformers[yarn]",),
  ),
  Mutation(
    "yarn_ramp_swapped",
    "smollm3_jax/nn/model.py",
    "blended = inv_freq_interp * (1 - extrapolation_weight) + inv_freq * extrapolation_weight",
    "blended = inv_freq_interp * extrapolation_weight + inv_freq * (1 - extrapolation_weight)",
    (C + "test_f32_logits_match_transformers[yarn]",),
  ),
  Mutation(
    "linear_rope_factor_ignored",
    "smollm3_jax/nn/model.py",
    "return (inv_freq / np.float32(rs.factor)).astype(np.float32), 1.0",
    "return inv_freq, 1.0",
    (C + "test_linear_rope_scaling_matches_transformers",),
  ),
  Mutation(
    "padding_and_future_slots_visible",
    "smollm3_jax/nn/kv_cache.py",
    "return slots[None, None, :] <= query_slots[:, :, None]",
    "return slots[None, None, :] >= query_slots[:, :, None] * 0",
    (G + "test_greedy_batch_of_different_lengths_equals_transformers_row_by_row",),
  ),
  Mutation(
    "decode_position_off_by_one",
    "smollm3_jax/generation/decode.py",
    "hidden, cache = model.hidden_states(s.last[:, None], None, s.cache, window)",
    "hidden, cache = model.hidden_states(s.last[:, None], s.cache.lengths[:, None] + 1, s.cache, window)",
    (G + "test_greedy_single_prompt_equals_transformers",),
  ),
  Mutation(
    "key_from_slot_not_row",
    "smollm3_jax/generation/decode.py",
    "keys = sampling.step_keys(s.keys, s.num_generated)",
    "keys = sampling.step_keys(s.keys, s.num_generated + jnp.arange(s.num_generated.shape[0]))",
    ("tests/test_slots.py::test_rows_inserted_mid_flight_equal_rows_alone",),
  ),
  Mutation(
    "insert_keeps_old_context",
    "smollm3_jax/generation/sampling.py",  # the previous row's tokens stay
    "[None, :] < length[:, None]",
    "[None, :] >= 0",
    ("tests/test_slots.py::test_rows_inserted_mid_flight_equal_rows_alone",),
  ),
  Mutation(
    "shared_prefill_not_copied",
    "smollm3_jax/generation/decode.py",
    "copies = (source != slots) & (slots < cache.batch)",
    "copies = (source != source)",
    ("tests/test_slots.py::test_repeated_prompts_share_prefill_and_keep_their_own_seeds",),
  ),
  Mutation(
    "record_raw_is_processed",
    "smollm3_jax/generation/decode.py",
    "  chosen = raw[rows, tok]\n",
    "  chosen = proc[rows, tok]\n",
    ("tests/test_logprobs.py::test_recorded_logprobs_equal_transformers_on_a_tiny_smollm3",),
  ),
  Mutation(
    "read_window_never_left",
    "smollm3_jax/generation/decode.py",
    "fits = jnp.all(s.done | (s.cache.lengths < window))",
    "fits = True",
    (G + "test_one_decode_program_per_read_window_used",),
  ),
  Mutation(
    "context_stop_late",
    "smollm3_jax/generation/decode.py",
    "(rows.prompt_len + n >= shared.context_limit)",
    "(rows.prompt_len + n > shared.context_limit)",
    (G + "test_context_stop_and_context_error",),
  ),
  Mutation(
    "penalty_direction_swapped",
    "smollm3_jax/generation/sampling.py",
    "jnp.where(logits < 0, logits * p, logits / p)",
    "jnp.where(logits < 0, logits / p, logits * p)",
    (S + "test_repetition_penalty_matches_transformers",),
  ),
  Mutation(
    "generated_tokens_not_penalised",
    "smollm3_jax/generation/decode.py",
    "context = sampling.observe(s.context, tok[:, None], position[:, None], active[:, None], generated=True)",
    "context = s.context",
    (G + "test_greedy_single_prompt_equals_transformers",),
  ),
  Mutation(
    "top_p_ignores_top_k_mask",
    "smollm3_jax/generation/sampling.py",
    # top-p over the logits before top-k's cut (a copy taken before top-k)
    '  keys = _order_keys(x)\n  x = jax.lax.cond(\n    jnp.any(params.top_k > 0), lambda: jnp.where(_top_k_keep(keys, params.top_k, radix), x, -jnp.inf), lambda: x\n  )\n  x = jax.lax.cond(\n    jnp.any(params.top_p < 1.0), lambda: jnp.where(_top_p_keep(x, keys, params.top_p, radix), x, -jnp.inf), lambda: x\n  )\n',
    '  keys = _order_keys(x)\n  x0 = x\n  x = jax.lax.cond(\n    jnp.any(params.top_k > 0), lambda: jnp.where(_top_k_keep(keys, params.top_k, radix), x, -jnp.inf), lambda: x\n  )\n  x = jax.lax.cond(\n    jnp.any(params.top_p < 1.0), lambda: jnp.where(_top_p_keep(x0, keys, params.top_p, radix), x, -jnp.inf), lambda: x\n  )\n',
    (S + "test_top_p_sees_the_top_k_output",),
  ),
  Mutation(
    "top_p_drops_crossing_token",
    "smollm3_jax/generation/sampling.py",
    "jnp.where(keys[:, None, :] <= t[:, :, None], probs[:, None, :], 0.0)",
    "jnp.where(keys[:, None, :] < t[:, :, None], probs[:, None, :], 0.0)",
    (S + "test_top_p_matches_transformers",),
  ),
  Mutation(
    "top_k_off_by_one",
    "smollm3_jax/generation/sampling.py",
    "axis=-1, dtype=jnp.int32) >= k\n",
    "axis=-1, dtype=jnp.int32) >= k + 1\n",
    (S + "test_top_k_matches_transformers",),
  ),
  # The pool waits between programs on every backend (the accelerators' choice not to is ignored).
  Mutation(
    "pool_waits_on_every_backend",
    "smollm3_jax/generation/engine.py",
    "    if self.engine.choices.sync_phases:\n      jax.block_until_ready(x)\n",
    "    jax.block_until_ready(x)\n",
    ("tests/test_backend.py::test_a_pool_that_does_not_wait_between_programs_gives_the_same_tokens",),
  ),
  # Insert's block copy leaves the last block of a shared prompt's row out.
  Mutation(
    "insert_copy_drops_last_block",
    "smollm3_jax/generation/decode.py",
    "      for start in range(0, length, block):\n",
    "      for start in range(0, length - block, block):\n",
    ("tests/test_slots.py::test_a_shared_prompt_longer_than_one_copy_block_is_copied_whole",),
  ),
  # -0.0 and +0.0 with different order keys (a ``x + 0.0`` that XLA folds away under jit did this).
  Mutation(
    "order_keys_keep_zero_sign",
    "smollm3_jax/generation/sampling.py",
    "  bits = jnp.where(bits == jnp.uint32(0x80000000), jnp.uint32(0), bits)\n",
    "",
    ("tests/test_sort_free.py::test_signed_zero_ties_are_kept_like_transformers",),
  ),
  Mutation(
    "min_p_absolute",
    "smollm3_jax/generation/sampling.py",
    "return probs < min_p[:, None] * top",
    "return probs < min_p[:, None]",
    (S + "test_min_p_matches_transformers",),
  ),
  Mutation(
    "gguf_q_not_unpermuted",
    "smollm3_jax/checkpoints/gguf.py",
    '(".attn_q." in t.name or ".attn_k." in t.name)',
    '(".attn_k." in t.name)',
    (C + "test_gguf_matches_safetensors",),
  ),
  Mutation(
    "gguf_k_not_unpermuted",
    "smollm3_jax/checkpoints/gguf.py",
    '(".attn_q." in t.name or ".attn_k." in t.name)',
    '(".attn_q." in t.name)',
    (C + "test_gguf_matches_safetensors",),
  ),
  Mutation(
    "gguf_k_unpermuted_with_q_heads",
    "smollm3_jax/checkpoints/gguf.py",
    'n_head = config.num_attention_heads if ".attn_q." in t.name else config.num_key_value_heads',
    "n_head = config.num_attention_heads",
    (C + "test_gguf_matches_safetensors",),
  ),
  Mutation(
    "gguf_rope_scaling_factor_ignored",
    "smollm3_jax/checkpoints/gguf.py",
    "      factor=float(factor),\n",
    "      factor=1.0,\n",
    (C + "test_gguf_rope_scaling_metadata",),
  ),
  Mutation(
    "gguf_no_rope_list_ignored",
    "smollm3_jax/checkpoints/gguf.py",
    'no_rope = meta.get("smollm3.no_rope_layers")',
    "no_rope = None",
    (C + "test_gguf_no_rope_layers_metadata[list]",),
  ),
  Mutation(
    "gguf_nope_interval_off_by_one",
    "smollm3_jax/checkpoints/gguf.py",
    "int((i + 1) % int(interval) != 0)",
    "int(i % int(interval) != 0)",
    (C + "test_gguf_no_rope_layers_metadata[interval]",),
  ),
  Mutation(
    "shared_prefill_stale_holder",
    "smollm3_jax/generation/engine.py",
    "      holders -= overwritten\n",
    "      pass\n",
    ("tests/test_slots.py::test_a_later_row_copies_the_prompt_of_a_running_row",),
  ),
  # issue 34.1: a row taking its prompt from a slot that copies it in the same insert
  Mutation(
    "shared_prefill_source_copied_same_round",
    "smollm3_jax/generation/engine.py",
    "      ready = holders - copied\n",
    "      ready = holders\n",
    ("tests/test_slots.py::test_many_rows_sharing_prompts_through_few_slots_equal_rows_alone",),
  ),
  Mutation(
    "int8_per_tensor_scale",
    "smollm3_jax/nn/quantize.py",
    "amax = np.max(np.abs(w), axis=axis, keepdims=True)",
    "amax = np.max(np.abs(w), keepdims=True)",
    ("tests/test_quantize.py::test_quantize_rows_matches_torch_per_channel",),
  ),
  # ---- server request checks ------------------------------------------------------------------
  Mutation(
    "server_top_k_floor",
    "smollm3_jax/serving/protocol.py",
    '"top_k": dict(low=-1)',
    '"top_k": dict(low=-100)',
    (R + "test_out_of_range_settings_are_refused_naming_the_field",),
  ),
  Mutation(
    "server_min_p_unbounded",
    "smollm3_jax/serving/protocol.py",
    '"min_p": dict(low=0.0, high=1.0)',
    '"min_p": dict()',
    (R + "test_out_of_range_settings_are_refused_naming_the_field",),
  ),
  Mutation(
    "server_max_completion_tokens_zero",
    "smollm3_jax/serving/protocol.py",
    '"max_completion_tokens", None, low=1, integer=True)',
    '"max_completion_tokens", None, low=0, integer=True)',
    (R + "test_out_of_range_settings_are_refused_naming_the_field",),
  ),
  # ---- server worker and hostile clients ------------------------------------------------------
  # a job ended once all its rows are done: rows finishing in the same chunk lose their last piece
  Mutation(
    "server_job_ends_before_last_piece",
    "smollm3_jax/serving/worker.py",
    "if len(job.closed) == job.n and job in self._running:",
    "if all(r.done for r in job.rows):",
    ("tests/test_server.py::test_every_choice_gets_all_its_text",),
  ),
  Mutation(
    "server_recovery_pool_without_logprobs",
    "smollm3_jax/serving/worker.py",
    "        self.runner = self._new_runner()\n",
    "        self.runner = Runner(self.engine.pool(self.pool.slots, self.pool.length, stop_ids=self.pool.stop_ids,\n"
    "                             context_length=self.pool.context, chunk_steps=self.pool.chunk_steps),\n"
    "                             self.tokenizer, incremental=True)\n",
    ("tests/test_server.py::test_after_a_failed_step_the_pool_keeps_its_logprobs",),
  ),
  Mutation(
    "server_health_ignores_stall",
    "smollm3_jax/serving/server.py",
    "elif w is not None and w.stalled_for() > self.stall_seconds:",
    "elif False:",
    ("tests/test_server.py::test_health_reports_a_stalled_worker",),
  ),
  Mutation(
    "server_chunked_body_unbounded",
    "smollm3_jax/serving/server.py",
    "          if size > limit:\n",
    "          if False:\n",
    ("tests/test_server.py::test_chunked_body_over_the_limit_is_refused_while_it_arrives",),
  ),
  Mutation(
    "server_slow_body_waited_for",
    "smollm3_jax/serving/server.py",
    "with anyio.fail_after(self.body_timeout):",
    "with contextlib.nullcontext():",
    ("tests/test_server.py::test_slow_body_times_out_with_408",),
  ),
  # issue 34.10: message contents encoded as plain text: "<|im_start|>" in a message forges a turn
  Mutation(
    "server_contents_special_tokens_parsed",
    "smollm3_jax/serving/server.py",
    "req.thinking, self.date, split_special_tokens=True)",
    "req.thinking, self.date)",
    ("tests/test_server.py::test_special_token_text_in_a_message_cannot_forge_a_turn",),
  ),
  # issue 34.8: a grow's config written before its first rows
  Mutation(
    "sweep_grow_config_written_at_once",
    "smollm3_jax/sweep/store.py",
    "        self._pending = record  # grown",
    "        pass  # grown",
    ("tests/test_sweep_stats.py::test_a_finished_sweep_grows_by_its_new_rows_only",),
  ),
  # issue 34.7: a reference of the wrong type accepted when the prompt set is read
  Mutation(
    "sweep_prompt_reference_unchecked",
    "smollm3_jax/sweep/plan.py",
    "  if problem:\n    raise ValueError(f\"{name}: reference: {problem}\")",
    "  if False:\n    pass",
    ("tests/test_sweep.py::test_bad_prompt_records_are_refused_before_anything_runs",),
  ),
  # ---- sweeps ---------------------------------------------------------------------------------
  Mutation(
    "summary_eos_share_counts_other_stops",
    "smollm3_jax/sweep/stats.py",
    'float(r["stop_reason"] == "eos")',
    'float(r["stop_reason"] != "max_tokens")',
    (W + "test_summary_columns_recomputed_from_rows",),
  ),
  Mutation(
    "summary_accuracy_over_all_rows",
    "smollm3_jax/sweep/stats.py",
    "groups = [[float(c) for c in v] for v in scored.values()]",
    "groups = [[float(c) for c in v] for v in scored.values()] + [[0.0] * len(g) for p, g in by_prompt.items() if p not in scored]",
    (W + "test_summary_columns_recomputed_from_rows",),
  ),
  Mutation(
    "summary_rep4_on_3grams",
    "smollm3_jax/sweep/stats.py",
    "M.repeated_ngram_share(w, 4)",
    "M.repeated_ngram_share(w, 3)",
    (W + "test_summary_columns_recomputed_from_rows",),
  ),
  Mutation(
    "resume_refuses_new_batch_size",
    "smollm3_jax/sweep/store.py",
    'RESUMABLE_FIELDS = ("batch_size", ',
    "RESUMABLE_FIELDS = (",
    (W + "test_resume_with_another_batch_size_gives_the_same_rows",),
  ),
  # the one config-in-a-workdir check (sweep, fine-tuning, evaluation grid)
  Mutation(
    "workdir_check_ignores_nothing_that_may_change",
    "smollm3_jax/utils/workdir.py",
    "  may_change = tuple(may_change)\n",
    "  may_change = ()\n",
    (
      "tests/test_workdir.py::test_differences_name_dotted_fields_with_both_values",
      "tests/test_workdir.py::test_sweep_workdir_refuses_another_config_and_lets_resumable_fields_change",
    ),
  ),
  Mutation(
    "workdir_results_without_config_accepted",
    "smollm3_jax/utils/workdir.py",
    "    if results:\n      raise ConfigMismatchError",
    "    if False:\n      raise ConfigMismatchError",
    (
      "tests/test_workdir.py::test_finetune_refuses_checkpoints_without_a_readable_config",
      "tests/test_workdir.py::test_grid_refuses_finished_cells_without_a_readable_config",
    ),
  ),
  Mutation(
    "sweep_axis_off_restated",
    "smollm3_jax/sweep/plan.py",
    "off=None if required else setting.off",
    "off=None if required else 0",
    (W + "test_sampling_axes_take_kind_and_off_from_the_settings_registry",),
  ),
  Mutation(
    "torn_line_kept",
    "smollm3_jax/sweep/store.py",
    "if end < len(data) and repair:  # torn last line",
    "if False:  # torn last line",
    (W + "test_sigkill_then_resume_completes_without_gaps_or_duplicates",),
  ),
  # ---- engine cost and multi-process runs --------------------------------------------------
  Mutation(
    "prefill_padding_rows_write",
    "smollm3_jax/nn/kv_cache.py",
    "real = jnp.where(valid, jnp.arange(valid.shape[0]), jnp.argmax(valid))",
    "real = jnp.arange(valid.shape[0])",
    ("tests/test_slots.py::test_prefill_rows_of_several_prompts_equal_one_by_one",),
  ),
  Mutation(
    "fetch_only_local_rows",
    "smollm3_jax/utils/distributed.py",
    "return np.array(_collective(multihost_utils.process_allgather, x, True))",
    "return np.concatenate([np.array(x.addressable_shards[0].data)] * (x.shape[0] // x.addressable_shards[0].data.shape[0]))",
    ("tests/test_distributed.py::test_two_processes_write_the_rows_of_one",),
  ),
  Mutation(
    "row_seeds_ignore_row_index",
    "smollm3_jax/generation/settings.py",
    "idx * np.uint64(0x85EBCA77)",
    "idx * np.uint64(0)",
    (G + "test_row_seeds_are_distinct_and_reproducible",),
  ),
  Mutation(
    "runner_drops_cancelled_rows",
    "smollm3_jax/generation/runner.py",
    "    changed += [row.request for row in self._cancelled if row.request.done and id(row.request) not in seen]\n",
    "",
    ("tests/test_stream.py::test_a_cancelled_stream_ends_with_what_it_decoded",),
  ),
  Mutation(
    "pool_submit_skips_settings_check",
    "smollm3_jax/generation/engine.py",
    "  if names:  # one value per row and setting\n",
    "  if False:\n",
    (G + "test_bad_arguments_raise_before_compiling",),
  ),
  Mutation(
    "harvest_copies_one_slice_only",
    "smollm3_jax/generation/engine.py",
    "        have[i] = starts[i] + hi\n",
    "        have[i] = want[i]\n",
    ("tests/test_stream.py::test_chunks_longer_than_one_copy_slice_lose_no_token",),
  ),
  # ---- issue 14: hostile input (tools/hostile_replay.py; tests/test_hostile.py) -------------------
  Mutation(
    "server_json_digit_limit_500",
    "smollm3_jax/serving/server.py",
    "    except ValueError:  # an integer past Python's int-string digit limit (4300): "
    "not a JSON syntax error\n"
    "      raise RequestError(\"the request body holds an integer with too many digits to read\") from None\n",
    "",
    (H + "test_hostile_bodies_get_a_4xx_naming_the_field",),
  ),
  Mutation(
    "server_lone_surrogate_accepted",
    "smollm3_jax/serving/protocol.py",
    "  found = _lone_surrogate(body)\n",
    "  found = None\n",
    (H + "test_hostile_bodies_get_a_4xx_naming_the_field",),
  ),
  Mutation(
    "server_unbounded_setting_overflows",
    "smollm3_jax/serving/protocol.py",
    "  if isinstance(value, int) and not _fits_float(value):",
    "  if False:",
    (H + "test_hostile_bodies_get_a_4xx_naming_the_field",),
  ),
  Mutation(
    "server_falsy_logit_bias_ignored",
    "smollm3_jax/serving/protocol.py",
    "  if bias is not None and not isinstance(bias, dict):",
    "  if bias and not isinstance(bias, dict):",
    (H + "test_hostile_bodies_get_a_4xx_naming_the_field",),
  ),
  Mutation(
    "server_model_type_unchecked",
    "smollm3_jax/serving/protocol.py",
    "  if model is not None and not isinstance(model, str):\n",
    "  if False:\n",
    (H + "test_hostile_bodies_get_a_4xx_naming_the_field",),
  ),
  Mutation(
    "server_field_name_echoed_whole",
    "smollm3_jax/serving/protocol.py",
    "raise RequestError(f\"unknown field '{_name(name)}': this server does not implement it\", param=_name(name))",
    "raise RequestError(f\"unknown field '{name}': this server does not implement it\", param=name)",
    (H + "test_hostile_bodies_get_a_4xx_naming_the_field",),
  ),
  Mutation(
    "safetensors_header_not_object",
    "smollm3_jax/checkpoints/safetensors.py",
    "  if not isinstance(header, dict):\n",
    "  if False:\n",
    (H + "test_checkpoint_loaders_name_the_damaged_file",),
  ),
  Mutation(
    "safetensors_entry_types_unchecked",
    "smollm3_jax/checkpoints/safetensors.py",
    "      if not all(_is_count(x) for x in (*shape, begin, end)) or not isinstance(dtype_name, str):\n",
    "      if False:\n",
    (H + "test_checkpoint_loaders_name_the_damaged_file",),
  ),
  Mutation(
    "config_json_types_unchecked",
    "smollm3_jax/checkpoints/safetensors.py",
    "  problem = _config_problem(d)\n",
    "  problem = None\n",
    (H + "test_checkpoint_loaders_name_the_damaged_file",),
  ),
  Mutation(
    "config_json_error_names_no_file",
    "smollm3_jax/checkpoints/safetensors.py",
    "  raise ValueError(f\"{path}: {problem}\")\n",
    "  raise ValueError(problem)\n",
    (H + "test_checkpoint_loaders_name_the_damaged_file",),
  ),
  Mutation(
    "orbax_damaged_params_unnamed",
    "smollm3_jax/checkpoints/orbax.py",
    "  with _quiet(), _damaged(params_dir):\n    restored = ckptr.restore(params_dir, target)\n",
    "  with _quiet():\n    restored = ckptr.restore(params_dir, target)\n",
    (H + "test_checkpoint_loaders_name_the_damaged_file",),
  ),
  Mutation(
    "orbax_marker_list_unchecked",
    "smollm3_jax/checkpoints/orbax.py",
    "  if not isinstance(meta, dict):\n",
    "  if False:\n",
    (H + "test_checkpoint_loaders_name_the_damaged_file",),
  ),
  # The bundled prompt set read from the checkout's data/ (as configs/sweep.py once did): fine in a checkout,
  # missing from an installed wheel, where the Colab notebook's sweep then finds no prompts.
  Mutation(
    "prompt_set_outside_the_package",
    "smollm3_jax/sweep/presets.py",
    'PROMPT_SET = os.fspath(importlib.resources.files(__package__).joinpath("prompts", "sweep.jsonl"))',
    'PROMPT_SET = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), '
    '"data", "prompts", "sweep.jsonl")',
    ("tests/test_notebooks.py::test_colab_notebook_runs_from_an_installed_wheel_without_the_repository",),
  ),
  Mutation(
    "server_refusal_keeps_its_frames",
    "smollm3_jax/serving/server.py",
    "      e.__traceback__ = e.__context__ = None\n",
    "",
    (H + "test_a_refused_huge_prompt_is_freed_at_once",),
  ),
  Mutation(
    "huge_setting_overflows",
    "smollm3_jax/generation/settings.py",
    "  except (TypeError, ValueError, OverflowError):",
    "  except (TypeError, ValueError):",
    ("tests/test_stream.py::test_mistyped_arguments_are_refused_by_name_before_compiling[huge_temperature]",),
  ),
  Mutation(
    "chat_flag_read_by_truthiness",
    "smollm3_jax/text/prompts.py",
    "  chat = validation.as_bool(\"chat\", chat)\n",
    "  chat = bool(chat)\n",
    ("tests/test_stream.py::test_mistyped_arguments_are_refused_by_name_before_compiling[chat]",),
  ),
  Mutation(
    "lone_surrogate_prompt_unchecked",
    "smollm3_jax/text/prompts.py",
    "      text.encode(\"utf-8\")\n",
    "      text.encode(\"utf-8\", errors=\"surrogatepass\")\n",
    ("tests/test_stream.py::test_mistyped_arguments_are_refused_by_name_before_compiling[surrogate_text]",),
  ),
  # ---- hostile replay, sweep and fine-tuning workdirs (hand-edited rows and configs, damaged checkpoints) ----
  Mutation(
    "sweep_row_types_unchecked",
    "smollm3_jax/sweep/store.py",
    "      return f\"no {name!r}\"\n    if not ok(row[name]):\n",
    "      return f\"no {name!r}\"\n    if False:\n",
    ("tests/test_sweep_store.py::test_a_row_with_a_field_of_the_wrong_type_is_corrupt_and_redone",),
  ),
  Mutation(
    "sweep_row_digest_unchecked",
    "smollm3_jax/sweep/store.py",
    "  if \"digest\" in row and row[\"digest\"] != row_digest(row):\n",
    "  if False:\n",
    ("tests/test_sweep_store.py::test_a_hand_edited_row_is_found_by_its_digest_and_redone",),
  ),
  Mutation(
    "sweep_stored_config_unchecked",
    "smollm3_jax/sweep/store.py",
    "    return workdir_config.read_record(self.path, results=results, check=_check_stored)\n",
    "    return workdir_config.read_record(self.path, results=results)\n",
    ("tests/test_workdir.py::test_sweep_workdir_refuses_a_damaged_stored_config_naming_the_field",),
  ),
  Mutation(
    "finetune_baseline_kept_on_restart",
    "smollm3_jax/training/finetune.py",
    "    _metrics_lines(workdir, -1)  # no checkpoint",
    "    _metrics_lines(workdir, 0)  # no checkpoint",
    ("tests/test_train.py::test_every_resume_logs_each_metrics_line_once",),
  ),
  Mutation(
    "finetune_last_eval_after_last_checkpoint",
    "smollm3_jax/training/finetune.py",
    "      eval_losses.append((total, run_eval(total)))\n      if mngr.latest_step() != total:\n        save(total)\n",
    "      if mngr.latest_step() != total:\n        save(total)\n      eval_losses.append((total, run_eval(total)))\n",
    ("tests/test_train.py::test_every_resume_logs_each_metrics_line_once",),
  ),
  Mutation(
    "finetune_damaged_checkpoint_raw_error",
    "smollm3_jax/training/finetune.py",
    "    restored = mngr.restore(step, args=args)\n  except Exception as e:",
    "    restored = mngr.restore(step, args=args)\n  except ZeroDivisionError as e:",
    ("tests/test_train.py::test_a_damaged_checkpoint_is_refused_naming_its_step",),
  ),
  # ---- deviceless compile check (issue 28) ----------------------------------------------------
  Mutation(
    "aot_cache_copies_never_counted",
    "smollm3_jax/generation/aot.py",
    '    if not any("S(" in layout for layout in layouts):\n      n += 1\n',
    "    if False:\n      n += 1\n",
    ("tests/test_aot.py::test_a_planted_whole_cache_copy_is_counted",),
  ),
  Mutation(
    "qkv_product_reshaped_into_heads",
    "smollm3_jax/nn/model.py",
    "  if not isinstance(proj, nnx.Linear):\n    return proj(x).reshape(",
    "  if True:\n    return proj(x).reshape(",
    ("tests/test_aot.py::test_no_program_re_lays_out_a_weight",),
  ),
  Mutation(
    "tpu_searches_by_bisection",
    "smollm3_jax/utils/backend.py",
    "    search_radix=16,\n    int8_w8a8=False,\n",
    "    search_radix=2,\n    int8_w8a8=False,\n",
    ("tests/test_aot.py::test_decode_on_an_accelerator_searches_the_filters_cut_offs_in_wide_rounds",),
  ),
  Mutation(
    "tpu_int8_quantizes_activations",
    "smollm3_jax/utils/backend.py",
    "    search_radix=16,\n    int8_w8a8=False,\n",
    "    search_radix=16,\n    int8_w8a8=True,\n",
    ("tests/test_aot.py::test_beam_search_and_int8_decode_compile_and_fit",),
  ),
  Mutation(
    "weight_only_int8_rounds_the_activations",
    "smollm3_jax/nn/quantize.py",
    "  if not activations:\n    acc = jax.lax.dot_general(",
    "  if False:\n    acc = jax.lax.dot_general(",
    ("tests/test_quantize.py::test_weight_only_int8_matmul_is_the_dequantized_product",),
  ),
  Mutation(
    "tpu_compiles_without_its_options",
    "smollm3_jax/utils/backend.py",
    '    compiler_options=(("xla_tpu_msa_inefficient_use_to_copy_ratio", "1.0"),),\n',
    "",
    ("tests/test_aot.py::test_decode_does_not_round_trip_the_cache_through_on_chip_memory",),
  ),
  Mutation(
    "aot_compiles_into_the_persistent_cache",
    "smollm3_jax/utils/runtime.py",
    '  jax.config.update("jax_enable_compilation_cache", False)\n  _reset_jax_cache()\n',
    '  jax.config.update("jax_enable_compilation_cache", False)\n',
    ("tests/test_aot.py::test_compile_only_programs_skip_the_persistent_cache",),
  ),
  Mutation(
    "host_cache_stays_off_after_an_aot_compile",
    "smollm3_jax/utils/runtime.py",
    '    jax.config.update("jax_enable_compilation_cache", was)\n    _reset_jax_cache()\n',
    '    jax.config.update("jax_enable_compilation_cache", was)\n',
    ("tests/test_aot.py::test_compile_only_programs_skip_the_persistent_cache",),
  ),
  Mutation(
    "tpu_prefill_attends_all_queries_at_once",
    "smollm3_jax/utils/backend.py",
    "    query_block=64,\n",
    "    query_block=0,\n",
    ("tests/test_aot.py::test_a_wide_prefill_against_a_long_window_keeps_its_scores_on_chip",),
  ),
  Mutation(
    "query_blocks_share_the_first_block_s_mask",
    "smollm3_jax/nn/model.py",
    "attend(q[:, i : i + query_block], k, v, mask[:, i : i + query_block])",
    "attend(q[:, i : i + query_block], k, v, mask[:, :query_block])",
    (
      "tests/test_prefill_chunks.py::test_attention_in_query_blocks_equals_the_formula",
      "tests/test_prefill_chunks.py::test_the_accelerators_prefill_shape_equals_transformers",
    ),
  ),
  Mutation(
    "query_blocks_drop_the_last_partial_block",
    "smollm3_jax/nn/model.py",
    "for i in range(0, t, query_block)]",
    "for i in range(0, t - t % query_block, query_block)]",
    ("tests/test_prefill_chunks.py::test_attention_in_query_blocks_equals_the_formula",),
  ),
  Mutation(
    "mesh_rows_read_from_the_other_chips",
    "smollm3_jax/nn/kv_cache.py",
    "jnp.sum(jnp.where(owner, bits, jnp.zeros_like(bits))",
    "jnp.sum(jnp.where(~owner, bits, jnp.zeros_like(bits))",
    ("tests/test_sharding.py::test_sharded_greedy_tokens_equal_single_device",),
  ),
  Mutation(
    "mesh_rows_indexed_across_the_split_axis",
    "smollm3_jax/generation/engine.py",
    "    return batch_shards(self.state.cache.k[0])\n",
    "    return 1\n",
    ("tests/test_aot.py::test_prefill_and_insert_on_a_mesh_touch_only_their_rows",),
  ),
  Mutation(
    "aot_compiles_with_the_host_choices",
    "smollm3_jax/generation/aot.py",
    '    kwargs.setdefault("choices", backend.choices(tgt.devices[0].platform))\n',
    "",
    ("tests/test_aot.py::test_decode_on_an_accelerator_searches_the_filters_cut_offs_in_wide_rounds",),
  ),
  Mutation(
    "search_stops_a_round_early",
    "smollm3_jax/generation/sampling.py",
    "  rounds = -(-32 // shift)\n",
    "  rounds = -(-32 // shift) - 1\n",
    (S + "test_cut_offs_are_exact_between_adjacent_floats",),
  ),
  Mutation(
    "traffic_sums_every_branch",
    "smollm3_jax/generation/aot.py",
    "        out += pick(options, key=lambda t: sum(x.bytes for x in t), default=[])\n",
    "        out += [t for o in options for t in o]\n",
    ("tests/test_aot.py::test_the_traffic_estimate_takes_one_branch_and_counts_inner_loops",),
  ),
  Mutation(
    "prefill_window_copied_and_written_back",
    "smollm3_jax/generation/decode.py",
    "  part = KVCache(\n"
    "    k=cache.k, v=cache.v, lengths=starts, dtype=cache.dtype, rows=slots, query_block=query_block, shards=shards\n"
    "  )\n"
    "  _, part = model.hidden_states(tokens, None, part, window)\n"
    "  k, v = part.k, part.v\n",
    "  rows = lambda kv: tuple(jnp.take(x, slots, axis=0, mode='clip')[:, :, :window] for x in kv)\n"
    "  part = KVCache(k=rows(cache.k), v=rows(cache.v), lengths=starts, dtype=cache.dtype)\n"
    "  _, part = model.hidden_states(tokens, None, part)\n"
    "  back = lambda kv, new: tuple(jax.lax.dynamic_update_slice(f, p, (slots[0], 0, 0, 0)) for f, p in zip(kv, new))\n"
    "  k, v = back(cache.k, part.k), back(cache.v, part.v)\n",
    ("tests/test_aot.py::test_prefill_moves_little_more_than_its_ideal",),
  ),
)


def _source_files() -> list[str]:
  """Tracked and untracked-but-not-ignored files of the working tree (deleted ones skipped)."""
  out = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
  ).stdout.decode()
  return [p for p in out.split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def _copy_tree(dst: str) -> None:
  for rel in _source_files():
    os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
    shutil.copy2(os.path.join(ROOT, rel), os.path.join(dst, rel))


def _check_texts(mutations) -> None:
  """Every ``old`` text occurs exactly once in its file: fail loudly before running anything."""
  problems = []
  for m in mutations:
    with open(os.path.join(ROOT, m.path)) as f:
      count = f.read().count(m.old)
    if count != 1:
      problems.append(f"{m.name}: {m.path} contains the text to replace {count} times (need 1):\n  {m.old!r}")
  if problems:
    sys.exit("mutation list out of step with the code:\n" + "\n".join(problems))


def _pytest(scratch: str, tests, timeout: int) -> tuple[int, float, str]:
  env = dict(
    os.environ,
    PYTHONPATH=scratch + os.pathsep + os.environ.get("PYTHONPATH", ""),
    JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
  )
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", f"timeout={timeout}", *tests]
  t0 = time.time()
  try:
    proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout + 120)
    return proc.returncode, time.time() - t0, proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:
    return -1, time.time() - t0, f"timed out after {timeout + 120} s\n{e.stdout or ''}"


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
  parser.add_argument("--list", action="store_true", help="list the mutations and exit")
  parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
  parser.add_argument("--timeout", type=int, default=600, help="per-test timeout, seconds")
  parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
  args = parser.parse_args()

  by_name = {m.name: m for m in MUTATIONS}
  unknown = [n for n in args.names if n not in by_name]
  if unknown:
    sys.exit(f"unknown mutation(s) {unknown}; --list shows the names")
  selected = [by_name[n] for n in args.names] if args.names else list(MUTATIONS)
  if args.list:
    for m in selected:
      print(f"{m.name:40s} {m.path:36s} {' '.join(m.tests)}")
    return 0
  _check_texts(selected)

  scratch = tempfile.mkdtemp(prefix="smollm3_mutate_")
  try:
    _copy_tree(scratch)
    probe = subprocess.run(
      [sys.executable, "-c", "import smollm3_jax; print(smollm3_jax.__file__)"],
      cwd=scratch,
      env=dict(os.environ, PYTHONPATH=scratch),
      capture_output=True,
      text=True,
    )
    if not probe.stdout.startswith(scratch):
      sys.exit(f"the scratch copy does not shadow the installed package: {probe.stdout}{probe.stderr}")
    print(f"scratch copy: {scratch}", flush=True)

    if not (args.no_baseline or args.names):
      union = list(dict.fromkeys(t for m in selected for t in m.tests))
      rc, secs, out = _pytest(scratch, union, args.timeout)
      print(f"baseline (no mutation, {len(union)} tests): {'pass' if rc == 0 else 'FAIL'} in {secs:.0f} s", flush=True)
      if rc != 0:
        print(out[-4000:])
        return 2

    results = []
    for m in selected:
      path = os.path.join(scratch, m.path)
      with open(path) as f:
        original = f.read()
      try:
        with open(path, "w") as f:
          f.write(original.replace(m.old, m.new))
        rc, secs, out = _pytest(scratch, m.tests, args.timeout)
      finally:
        with open(path, "w") as f:
          f.write(original)
      verdict = {0: "SURVIVED", 1: "caught"}.get(rc, f"ERROR (pytest exit {rc})")
      failed = [l.split(" ")[1] for l in out.splitlines() if l.startswith("FAILED ")]
      print(f"{verdict:10s} {m.name:40s} {secs:5.0f} s  {', '.join(f.split('::')[-1] for f in failed)}", flush=True)
      if rc not in (0, 1):
        print(out[-3000:])
      results.append((m, rc))
    caught = sum(rc == 1 for _, rc in results)
    print(
      f"\n{caught}/{len(results)} caught; survived: "
      f"{[m.name for m, rc in results if rc == 0] or 'none'}; errors: "
      f"{[m.name for m, rc in results if rc not in (0, 1)] or 'none'}"
    )
    return 0 if caught == len(results) else 1
  finally:
    if args.keep:
      print(f"kept {scratch}")
    else:
      shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
