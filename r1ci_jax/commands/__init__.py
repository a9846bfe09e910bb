"""Subcommands of the `r1ci` CLI, one module per group."""
