"""The fleet as a whole: ``fetch_sockets``, ``sockets_join``/``leave``,
``disconnect_sockets``, server events and which servers are alive, over the
fleet topic and a ``FleetHost`` the manager meets; imports neither recovery
nor observability.
"""
