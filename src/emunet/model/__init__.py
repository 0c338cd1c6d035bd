"""The networks, their checkpoints and their exports."""
