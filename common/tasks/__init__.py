"""The built-in tasks: digits, MNIST, Fashion-MNIST and FEMNIST.

Each is a module with ``make_task(settings)``, exactly like a user's task module, over the data
sets of ``common.data`` and the models of ``common.models`` (``image_sets``).
"""
