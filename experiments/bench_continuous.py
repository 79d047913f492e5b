"""Continuous-batching rows of experiments/benchmark.py (imported by it; not a script of its own).

* ``bench_refill``: a thinking-length sweep (prompts x cells, a long budget) through one slot pool,
  with refill on (a row starts as soon as a slot frees up) and off (fixed batches of the pool's size
  that wait for their longest row: the engine before continuous batching), alternated and best of
  two. Same engine, same rows, same tokens; slot utilization = generated tokens / (slots x decode
  steps).
* ``bench_server``: the chat server with N clients asking at once vs the same N requests one after
  another (aggregate generated tokens per wall second).
"""

from __future__ import annotations

import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sweep_requests(tokenizer, n_prompts: int, budget: int, seed: int):
  """The rows of a 2-cell sweep (thinking off/on, T=0.6, top_p=0.95) over the first ``n_prompts``
  prompts of the bundled set, as pool requests in the sweep runner's queue order (refill on and off
  get the same order)."""
  from smollm3_jax.text.prompts import render_prompts
  from smollm3_jax.generation.engine import Request
  from smollm3_jax.sweep import plan

  from smollm3_jax.sweep.execute import queue_order

  prompts = plan.load_prompts(os.path.join(ROOT, "data", "prompts", "sweep.jsonl"), limit=n_prompts)
  rows = [dict(prompt_id=p["id"], settings=dict(thinking=think)) for p in prompts for think in (False, True)]
  by_id = {p["id"]: p for p in prompts}
  requests = []
  for r in queue_order(rows, by_id):  # the sweep runner's order: longest-expected prompt kinds first
    think = r["settings"]["thinking"]
    _, (ids,) = render_prompts(tokenizer, [by_id[r["prompt_id"]]["prompt"]], thinking=think, date="2025-06-15")
    requests.append(Request(prompt=ids, settings=dict(temperature=0.6, top_p=0.95), max_new=budget, share=0,
                            seed=plan.row_seed(seed, r["prompt_id"], f"think={int(think)}", 0)))
  return requests


def bench_refill(model, tokenizer, *, slots: int = 16, n_prompts: int = 24, budget: int = 512, seed: int = 0,
                 repeats: int = 2):
  """Rows ``refill`` on and off: utilization, decode and wall tokens/s, and their ratio. The two runs
  alternate ``repeats`` times (on, off, on, off, ...) and each keeps its best, so a burst of load on
  this shared machine during one run does not decide the ratio."""
  import dataclasses

  from smollm3_jax.generation.engine import get_engine

  engine = get_engine(model, tokenizer)
  base = _sweep_requests(tokenizer, n_prompts, budget, seed)
  length = engine.cache_length_for(max(len(r.prompt) for r in base) + budget - 1)
  runs: dict[bool, list[dict]] = {True: [], False: []}
  tokens: dict[bool, list] = {True: [], False: []}
  for repeat in range(max(1, repeats)):
    for refill in (True, False):
      requests = [dataclasses.replace(r) for r in base]
      # refill off = the engine before continuous batching: fixed batches that wait for their longest row
      pool = engine.pool(slots, length, stop_ids=tokenizer.stop_token_ids, refill=refill, chunk_steps=32,
                         shrink=refill)
      pool.warmup()  # compiles apart from the timed run
      pool.stats.clear()
      t0 = time.perf_counter()
      pool.submit(requests)
      pool.run()
      wall = time.perf_counter() - t0
      st = pool.stats
      lengths = [len(r.token_ids) for r in requests]
      tokens[refill].append([r.token_ids for r in requests])
      row = dict(kind="refill", refill=refill, repeat=repeat, slots=slots, rows=len(requests), budget=budget,
                 generated_tokens=int(st["generated"]), decode_steps=int(st["decode_steps"]),
                 slot_utilization=pool.utilization(), wall_seconds=wall, decode_seconds=st["decode_seconds"],
                 prefill_seconds=st["prefill_seconds"] + st["insert_seconds"],
                 compile_seconds=st["compile_seconds"],
                 ours_tokens_per_second=st["generated"] / (wall - st["compile_seconds"]),
                 decode_tokens_per_second=st["generated"] / st["decode_seconds"],
                 min_length=min(lengths), max_length=max(lengths),
                 mean_queue_seconds=sum(r.queue_seconds for r in requests) / len(requests))
      runs[refill].append(row)
      print("  " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
            flush=True)
  rows = [max(runs[refill], key=lambda r: r["ours_tokens_per_second"]) for refill in (True, False)]
  for row in rows:
    row["all_tokens_per_second"] = [r["ours_tokens_per_second"] for r in runs[row["refill"]]]
  on, off = rows
  first = tokens[True][0]
  on["same_tokens_as_refill_off"] = all(t == first for t in tokens[True] + tokens[False])
  on["ratio"] = on["ours_tokens_per_second"] / off["ours_tokens_per_second"]
  return rows


def bench_server(model, tokenizer, *, clients: int = 8, max_tokens: int = 64, seed: int = 0):
  """Aggregate tokens/s of ``clients`` requests at once vs one after another (one server, warmed
  up; every request asks for exactly ``max_tokens`` tokens via ``min_tokens``)."""
  import asyncio

  import httpx

  from smollm3_jax.serving import server

  app = server.create_app(model, tokenizer, temperature=0.0, max_tokens=max_tokens, slots=clients,
                          context_length=1024, seed=seed, date="2025-06-15")
  t0 = time.perf_counter()
  server.warmup(app)
  warm = time.perf_counter() - t0
  topics = ["the sea", "a city at night", "an old clock", "a mountain", "the first snow", "a library",
            "a train", "a garden", "the moon", "a market"]
  bodies = [dict(messages=[{"role": "user", "content": f"Write a short poem about {topics[i % len(topics)]}."}],
                 max_tokens=max_tokens, min_tokens=max_tokens, temperature=0.0, seed=seed + i)
            for i in range(clients)]

  async def one(client, body):
    r = await client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return r.json()

  async def together(url):
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
      return await asyncio.gather(*(one(client, b) for b in bodies))

  async def in_turn(url):
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
      return [await one(client, b) for b in bodies]

  rows = []
  with server.BackgroundServer(app) as srv:
    asyncio.run(in_turn(srv.url))  # settles the first-use costs outside the timings
    for mode, run in (("concurrent", together), ("sequential", in_turn)):
      t0 = time.perf_counter()
      outs = asyncio.run(run(srv.url))
      wall = time.perf_counter() - t0
      generated = sum(o["usage"]["completion_tokens"] for o in outs)
      rows.append(dict(kind="server", mode=mode, clients=clients, max_tokens=max_tokens, wall_seconds=wall,
                       generated_tokens=generated, ours_tokens_per_second=generated / wall,
                       texts=[o["choices"][0]["message"]["content"] for o in outs], warmup_seconds=warm))
  concurrent, sequential = rows
  concurrent["ratio"] = concurrent["ours_tokens_per_second"] / sequential["ours_tokens_per_second"]
  concurrent["same_texts_as_sequential"] = concurrent["texts"] == sequential["texts"]
  for row in rows:
    print("  " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if k != "texts"), flush=True)
  return rows


def targets(rows) -> list[str]:
  """The continuous-batching issue's targets, met or not, for the rows that ran."""
  out = []
  on = next((r for r in rows if r["kind"] == "refill" and r["refill"]), None)
  if on is not None:
    out.append(f"  slot utilization with refill: {on['slot_utilization']:.2f} (target >= 0.80) "
               f"{'OK' if on['slot_utilization'] >= 0.8 else 'MISSED'}")
    out.append(f"  sweep tokens/s, refill on vs off: {on['ratio']:.2f}x (target >= 2.00x) "
               f"{'OK' if on['ratio'] >= 2 else 'MISSED'}; same tokens: {on['same_tokens_as_refill_off']}")
  srv = next((r for r in rows if r["kind"] == "server" and r["mode"] == "concurrent"), None)
  if srv is not None:
    out.append(f"  server, {srv['clients']} clients at once vs one after another: {srv['ratio']:.2f}x "
               f"(target >= 4.00x) {'OK' if srv['ratio'] >= 4 else 'MISSED'}; same texts: "
               f"{srv['same_texts_as_sequential']}")
  return out
