"""What a build promises: accuracy metrics, the gate, the manifest (and its schema) and the HTML report."""
