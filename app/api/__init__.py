"""HTTP routes; each module one group of endpoints."""
