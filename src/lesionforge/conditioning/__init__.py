"""conditioning stage."""
