"""fedveil's server strategy: Flower strategy wrappers, one job each, around any aggregator.

The server's stack, outermost first (``server.strategy.stack.build_stack``)::

    BudgetAwareSampling(CompressedDownlink(SealedUpdates(ScreenedUpdates(aggregator))))
    BudgetAwareSampling(CompressedDownlink(SealedUpdates(AuditedUpdates(ScreenedUpdates(
        aggregator)))))  # privacy.audit

Ordering contract. Requests flow inwards and come back out decorated; replies flow inwards.

* ``BudgetAwareSampling`` is outermost: it decides who is sampled, opens the round in the shared
  ``RoundBook`` and gives the inner wrappers a Grid holding only the sampled nodes.
* ``CompressedDownlink`` comes next: it replaces each request's dense model by the signed,
  quantized change since the reference that node holds, and learns from each reply which
  reference the node holds now; a node refusing its downlink is rejected here, uncharged.
* ``SealedUpdates`` comes next: nothing inside it sees a sealed byte, a refusal, an error or a
  reply whose DP facts do not hold; it hands on ``global + delta`` plaintext replies.
* ``AuditedUpdates`` (only with ``privacy.audit``) sends each planned account its canary seeds
  and scores the opened updates it passes on unchanged (``server.audit``).
* ``ScreenedUpdates`` is innermost of ours: it scores updates before clipping them and passes
  only kept, clipped updates to the aggregator (which may be Flower's central-DP wrapper: its
  clip and noise then act on screened updates). It calls the aggregator's ``configure_train``,
  which builds the requests, so Flower's wrappers see the global arrays themselves.

Simulation-only wrappers (``simulations.adversary.strategy``) go outside all of these.
"""
