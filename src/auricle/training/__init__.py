"""What distillation and fine-tuning share: the torchrun setup, the learning-rate schedule, state files."""
