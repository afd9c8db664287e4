"""The orchestrator: the top of the library, above the stages and release. It runs a build's plan
(`build`), its shards (`shards`) and publishes the manifest, gate and report (`publish`)."""
