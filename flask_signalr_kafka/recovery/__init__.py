"""Connection state recovery: the sessions topic, delivery steps, replay, the
handshake's decisions, the saves, ``Recovery`` over them, its settings and
figures. Takes the core and a ``ConnectionHost`` the manager meets; imports
neither the fleet nor observability.
"""
