"""Training engine: FsodTrainer and hooks."""
