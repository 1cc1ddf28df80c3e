"""Local deployments of real Flower processes: ``fedveil federation up``.

``federation`` orchestrates (up, resume, summary); ``local`` runs a SuperLink and SuperNodes;
``bundle`` stages the app (``server.app:app``, ``client.app:app``); ``commands`` speaks to
Flower's command lines; ``supervisor`` and ``processes`` start and stop processes by pid and
start time; ``footprint`` measures the nodes; ``record`` is ``deployment.json``; ``material``
the keys and certificates; ``layout`` the files and ports; ``logs`` reads growing files.
"""
