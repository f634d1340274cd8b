"""Training APIs, one module each, all driven through the Adapter contract in ``base``."""
