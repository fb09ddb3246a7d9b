"""Losses on stored (or online) targets: soft-target cross-entropy, KD and DeiT terms, feature losses."""
