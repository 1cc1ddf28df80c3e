"""fedveil's shared layer: config, data, models, accounting, codec and sealing.

Imported by both the client and the server; imports only third-party packages.
"""
