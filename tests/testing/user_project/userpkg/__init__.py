"""A user's package: two training loops they want to keep honest."""
