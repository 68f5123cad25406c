"""The command line: ``venncell-train``, ``venncell-embed``, ``venncell-predict``, ``venncell-report`` and
``venncell-sweep-summary`` (Hydra apps over ``venncell.VennCell``; configs in ``venncell/conf``)."""
