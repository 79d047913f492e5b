"""Generation: the settings registry and its checks (:mod:`.settings`), the traced sampling chain
(:mod:`.sampling`), the compiled decode programs (:mod:`.decode`), the slot pool and engine
(:mod:`.engine`), the one runner of the pool (:mod:`.runner`), stop handling (:mod:`.stop`), results
(:mod:`.results`), beam search (:mod:`.beam`), checkpoint defaults (:mod:`.defaults`) and the user API
(:mod:`.api`: ``generate``, ``stream``)."""
