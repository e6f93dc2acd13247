"""The study side: typed YAML study configs, the resumable cell runner, the demo and the report."""
