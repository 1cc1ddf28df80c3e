"""Local deployments of real Flower processes: `fedveil federation up`, supervision, footprint."""
