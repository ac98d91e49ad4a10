"""reign_sample: not yet implemented."""
