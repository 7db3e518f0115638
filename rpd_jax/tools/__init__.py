"""Tools around training runs: ``sweep`` (variants x seeds, then curves) and ``plot``."""
