"""Example user tasks for fedveil; each uses only ``common.task``, the task interface."""
