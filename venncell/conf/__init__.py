"""Hydra configs of the command line (YAML files; structured defaults in venncell.cli.store)."""
