"""dn2-watch: the camera loop (reader thread -> bounded queue -> batched scorer -> events)."""
