"""fedveil's Flower ServerApp: opening, validating and aggregating updates; the ledger."""
