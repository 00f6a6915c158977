"""Data: few-shot datasets, splits, support pool, episodic mapper, toy data."""
