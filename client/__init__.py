"""fedveil's Flower ClientApp: DP-SGD training, update encoding and sealing."""
