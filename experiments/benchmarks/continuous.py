"""Continuous-batching rows (``--continuous``, or alone with ``--continuous_only``; a checkpoint with a
tokenizer, e.g. demo):

* ``refill``: a thinking-length sweep (prompts x cells, a long budget) through one slot pool, with
  refill on (a row starts as soon as a slot frees up) and off (fixed batches of the pool's size that
  wait for their longest row: the engine before continuous batching), alternated and best of two.
  Same engine, same rows, same tokens; slot utilization = generated tokens / (slots x decode steps).
* ``server``: the chat server with N clients asking at once vs the same N requests one after
  another (aggregate generated tokens per wall second).
"""

from __future__ import annotations

from absl import app, flags

from benchmarks.common import DATE, print_row, target, wall_seconds

FLAGS = flags.FLAGS
flags.DEFINE_bool(
  "continuous",
  False,
  "Add the continuous-batching rows: a 24-prompt x 2-cell sweep with a 512-token "
  "budget through 16 slots, refill on vs off; the server with 8 clients at once vs one after another.",
)
flags.DEFINE_bool("continuous_only", False, "Only the continuous-batching rows.")
flags.DEFINE_integer("refill_slots", 16, "Continuous rows: slots of the sweep's pool.")
flags.DEFINE_integer("refill_prompts", 24, "Continuous rows: prompts of the sweep (x 2 cells: thinking off/on).")
flags.DEFINE_integer("refill_budget", 512, "Continuous rows: max_new_tokens of the sweep.")
flags.DEFINE_integer("server_clients", 8, "Continuous rows: concurrent clients of the server row.")
flags.DEFINE_integer("server_tokens", 64, "Continuous rows: tokens each server client asks for.")

ROW_NAMES = {
  "refill": lambda r: f"sweep {r['slots']} slots, refill {'on' if r['refill'] else 'off'}",
  "server": lambda r: f"server {r['clients']} {r['mode']}",
}


def flag_rows(model, tokenizer) -> list[dict]:
  """The refill and server rows as the flags say."""
  if tokenizer is None:
    raise app.UsageError(
      "the continuous-batching rows render chat prompts: use a checkpoint with a tokenizer (e.g. --checkpoint=demo)"
    )
  out = bench_refill(
    model,
    tokenizer,
    slots=FLAGS.refill_slots,
    n_prompts=FLAGS.refill_prompts,
    budget=FLAGS.refill_budget,
    seed=FLAGS.seed,
    repeats=min(2, FLAGS.repeats),
  )
  return out + bench_server(
    model, tokenizer, clients=FLAGS.server_clients, max_tokens=FLAGS.server_tokens, seed=FLAGS.seed
  )


def _sweep_requests(tokenizer, n_prompts: int, budget: int, seed: int):
  """The rows of a 2-cell sweep (thinking off/on, T=0.6, top_p=0.95) over the first ``n_prompts``
  prompts of the bundled set, as pool requests in the sweep runner's queue order (refill on and off
  get the same order)."""
  from smollm3_jax.generation.engine import Request
  from smollm3_jax.sweep import plan, presets
  from smollm3_jax.sweep.execute import queue_order
  from smollm3_jax.text.prompts import render_prompts

  prompts = plan.load_prompts(presets.PROMPT_SET, limit=n_prompts)
  rows = [dict(prompt_id=p["id"], settings=dict(thinking=think)) for p in prompts for think in (False, True)]
  by_id = {p["id"]: p for p in prompts}
  requests = []
  for r in queue_order(rows, by_id):  # the sweep runner's order: longest-expected prompt kinds first
    think = r["settings"]["thinking"]
    _, (ids,) = render_prompts(tokenizer, [by_id[r["prompt_id"]]["prompt"]], thinking=think, date=DATE)
    requests.append(
      Request(
        prompt=ids,
        settings=dict(temperature=0.6, top_p=0.95),
        max_new=budget,
        share=0,
        seed=plan.row_seed(seed, r["prompt_id"], f"think={int(think)}", 0),
      )
    )
  return requests


def bench_refill(
  model, tokenizer, *, slots: int = 16, n_prompts: int = 24, budget: int = 512, seed: int = 0, repeats: int = 2
):
  """Rows ``refill`` on and off: utilization, decode and wall tokens/s, and their ratio. The two runs
  alternate ``repeats`` times (on, off, on, off, ...) and each keeps its best, so a burst of load on
  this shared machine during one run does not decide the ratio."""
  from smollm3_jax.generation.engine import get_engine

  engine = get_engine(model, tokenizer)
  prompts = _sweep_requests(tokenizer, n_prompts, budget, seed)
  length = engine.cache_length_for(max(len(r.prompt) for r in prompts) + budget - 1)
  runs: dict[bool, list[dict]] = {True: [], False: []}
  tokens: dict[bool, list] = {True: [], False: []}
  for repeat in range(max(1, repeats)):
    for refill in (True, False):
      # Fresh requests each run (a copy would share the lists the pool extends: token ids, records).
      requests = _sweep_requests(tokenizer, n_prompts, budget, seed)
      # refill off = the engine before continuous batching: fixed batches that wait for their longest row
      pool = engine.pool(slots, length, stop_ids=tokenizer.stop_token_ids, refill=refill, chunk_steps=32, shrink=refill)
      pool.warmup()  # compiles apart from the timed run
      pool.stats.clear()
      pool.submit(requests)
      _, wall = wall_seconds(pool.run)
      st = pool.stats
      lengths = [len(r.token_ids) for r in requests]
      tokens[refill].append([r.token_ids for r in requests])
      row = dict(
        kind="refill",
        refill=refill,
        repeat=repeat,
        slots=slots,
        rows=len(requests),
        budget=budget,
        generated_tokens=int(st["generated"]),
        decode_steps=int(st["decode_steps"]),
        slot_utilization=pool.utilization(),
        wall_seconds=wall,
        decode_seconds=st["decode_seconds"],
        prefill_seconds=st["prefill_seconds"] + st["insert_seconds"],
        compile_seconds=st["compile_seconds"],
        ours_tokens_per_second=st["generated"] / (wall - st["compile_seconds"]),
        decode_tokens_per_second=st["generated"] / st["decode_seconds"],
        min_length=min(lengths),
        max_length=max(lengths),
        mean_queue_seconds=sum(r.queue_seconds for r in requests) / len(requests),
      )
      runs[refill].append(row)
      print_row(row)
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

  app = server.create_app(
    model, tokenizer, temperature=0.0, max_tokens=max_tokens, slots=clients, context_length=1024, seed=seed, date=DATE
  )
  _, warm = wall_seconds(lambda: server.warmup(app))
  topics = [
    "the sea",
    "a city at night",
    "an old clock",
    "a mountain",
    "the first snow",
    "a library",
    "a train",
    "a garden",
    "the moon",
    "a market",
  ]
  bodies = [
    dict(
      messages=[{"role": "user", "content": f"Write a short poem about {topics[i % len(topics)]}."}],
      max_tokens=max_tokens,
      min_tokens=max_tokens,
      temperature=0.0,
      seed=seed + i,
    )
    for i in range(clients)
  ]

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
      outs, wall = wall_seconds(lambda: asyncio.run(run(srv.url)))
      generated = sum(o["usage"]["completion_tokens"] for o in outs)
      rows.append(
        dict(
          kind="server",
          mode=mode,
          clients=clients,
          max_tokens=max_tokens,
          wall_seconds=wall,
          generated_tokens=generated,
          ours_tokens_per_second=generated / wall,
          texts=[o["choices"][0]["message"]["content"] for o in outs],
          warmup_seconds=warm,
        )
      )
  concurrent, sequential = rows
  concurrent["ratio"] = concurrent["ours_tokens_per_second"] / sequential["ours_tokens_per_second"]
  concurrent["same_texts_as_sequential"] = concurrent["texts"] == sequential["texts"]
  for row in rows:
    print_row(row, skip=("texts",))
  return rows


def targets(rows) -> list[str]:
  """The continuous-batching issue's targets, met or not, for the rows that ran."""
  out = []
  on = next((r for r in rows if r["kind"] == "refill" and r["refill"]), None)
  if on is not None:
    out += target("slot utilization with refill", on["slot_utilization"], 0.8)
    out += [
      line + f"; same tokens: {on['same_tokens_as_refill_off']}"
      for line in target("sweep tokens/s, refill on vs off", on["ratio"], 2.0, "{:.2f}x")
    ]
  srv = next((r for r in rows if r["kind"] == "server" and r["mode"] == "concurrent"), None)
  if srv is not None:
    out += [
      line + f"; same texts: {srv['same_texts_as_sequential']}"
      for line in target(f"server, {srv['clients']} clients at once vs one after another", srv["ratio"], 4.0, "{:.2f}x")
    ]
  return out
