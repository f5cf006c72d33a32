"""Several FLM processes sharing one database: change propagation, node rows."""
