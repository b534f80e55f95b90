"""Bronze ingest: contracts -> readers -> bronze, quarantine and ops.ingest_log."""
