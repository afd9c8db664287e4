"""Images in: sources, deterministic splits, the versioned calibration set, stratified sampling and the
preprocessing contract (uint8 pixels -> the model's input)."""
