"""Numerical building blocks the models call: attention implementations and losses."""
