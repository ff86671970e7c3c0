"""The offline trainer: `monoocc train | eval` (config, engine, evaluation)."""
