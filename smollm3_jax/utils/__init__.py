"""Shared utilities, the lowest layer (imports nothing else of the package): argument validation,
atomic files, workdir checks, the runtime (compilation cache, platform), multi-process helpers,
optional extras and shape buckets."""
