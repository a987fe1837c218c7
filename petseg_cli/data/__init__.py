"""Everything that turns files on disk into arrays; knows nothing of models."""
