"""Run configs: loading, validation, the key schema, defaults and recipes."""
