"""Silver standardisation: bronze strings -> typed, validated values in the restricted zone."""
