"""Model families, one file each, and the loader that finds and reads checkpoints."""
