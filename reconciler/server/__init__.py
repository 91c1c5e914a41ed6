"""The control plane (``reconcile serve``): store, webhook receivers, reconcile worker, API.

It talks to agents over HTTP only (``reconciler.model.agentapi``); it never imports
``agent``.
"""
