"""Connection state recovery: the sessions topic, delivery steps, replay, the
decisions of ``Recovery``, its settings and figures. Takes the core and a
``ConnectionHost`` the manager meets; imports neither the fleet nor
observability.
"""
