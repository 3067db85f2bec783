"""What runs on a backend for one batch: scoring now; optimisers and free energies later."""
