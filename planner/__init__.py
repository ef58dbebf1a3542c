"""moac's planner: cost, latency, compute and quality estimates for lowered plans."""
