"""Human review of synthetic sets: the review web page, the blinded real-or-synthetic test, the curated export."""
