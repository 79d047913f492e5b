"""The benchmarks of experiments/benchmark.py (its one entry point), one module per kind of row:

* :mod:`.common`: the model flags, model and transformers twin, chat prompts, runners, timing (the
  first run compiles, then best of --repeats), the printed row and the table;
* :mod:`.throughput`: prefill, decode, the settings sweep (ours vs transformers), cache budgets,
  sampled vs greedy (the default rows);
* :mod:`.accelerator`: decode at batch x cache budget on a GPU/TPU (``--accelerator_check``);
* :mod:`.continuous`: slot refill on/off and the server's concurrent clients (``--continuous``);
* :mod:`.baseline`: decode against another checkout in alternating fresh processes (``--baseline``);
* :mod:`.startup`: fresh-process start-up with no / a cold / a warm compilation cache (``--startup``).

Each module defines the flags it reads, its rows' table names (``ROW_NAMES``) and its targets.
"""
