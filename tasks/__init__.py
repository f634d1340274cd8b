"""Standard tasks: data, model factory, loss, metric, optimizer recipe, defaults, tolerances."""
