"""The manifest's top-level keys that edgebuild itself writes: a stage's own section (under its module's
name) takes none of them. Alone in this module so that the stage registry reads them without the
manifest code entering every stage's code digest."""

RESERVED_SECTIONS = frozenset((  # the manifest's top-level keys edgebuild writes: no stage's own section takes one
    "schema_version", "kind", "name", "config_sha256", "config", "seed", "class_names", "input_shape", "preprocessing",
    "preprocess", "built_here", "splits", "test_set", "calibration", "artifacts", "metrics", "resources", "test_split",
    "stages", "train", "qat", "export", "layers", "toolchain", "gate", "seal"))
