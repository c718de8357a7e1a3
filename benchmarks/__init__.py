"""The `lookahead-rag bench*` commands (docs/benchmarks.md): speed measured side by side in one
process, each ending with one JSON line. Benchmarks import the product packages; nothing in them
imports this one."""
