"""Getting jobs to a backend: in-process (embedded) or through Redis, via one batcher."""
