"""Training: one Ray Train loop (loop), stage specs (stages), DeepSpeed (engine), the driver (runner, chain)."""
