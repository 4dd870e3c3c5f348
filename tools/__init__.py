"""dn2 tools: evaluation, benchmarks and the offline demo, built on dn2.export and dn2.runtime."""
