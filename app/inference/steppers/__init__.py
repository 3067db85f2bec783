"""The optimisers behind /predict (and the chains behind /sample), one contract for all."""
