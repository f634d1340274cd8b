"""Report building from results and MLflow runs."""
