"""Fine-tuning: the loss and train step (optax), chat-format training data, and the resumable
fine-tuning run."""
