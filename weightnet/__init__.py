"""weightnet."""
