"""The training loop and what it is built from: step, state, optimizer, evaluation, logs."""
