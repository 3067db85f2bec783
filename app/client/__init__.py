"""Client-side tools for exercising the HTTP service."""
