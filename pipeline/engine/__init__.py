"""How a build runs: the typed config, the stage contract, the engine that runs stages in their own
processes through the content-addressed cache, and the shared plumbing (atomic files, errors, progress)."""
