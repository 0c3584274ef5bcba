"""PyTorch adapters (eager, torch.compile), the model code they run, and the one torch dtype table."""
