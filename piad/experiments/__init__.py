"""The benchmark grid: profiles, jobs, provenance, notebook execution, tables and figures."""
