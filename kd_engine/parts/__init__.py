"""Building blocks that methods share but that are not trainers: an EMA teacher, a kNN vote
memory, gradient subspaces, a cached SimCLR encoder and cached multi-label teacher tables."""
