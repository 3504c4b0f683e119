"""Running many federated clients in one process: a batched engine and a one-by-one reference."""
