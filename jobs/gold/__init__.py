"""Gold layer: aggregates for the bureau (metrics, data-quality scorecard, the index)."""
