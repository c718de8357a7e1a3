"""HTTP service, RAG orchestration, batch jobs and the CLI: the package that wires the rest."""
